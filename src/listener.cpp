#include "mxhook/listener.hpp"

#include <boost/asio/ip/v6_only.hpp>

namespace mxhook {

std::unique_ptr<boost::asio::ip::tcp::acceptor> open_listener(boost::asio::io_context& io, const HostPort& address,
                                                              int backlog) {
    using boost::asio::ip::tcp;
    const tcp::endpoint endpoint(boost::asio::ip::make_address(address.host), address.port);
    auto acceptor = std::make_unique<tcp::acceptor>(io);
    acceptor->open(endpoint.protocol());
    acceptor->set_option(tcp::acceptor::reuse_address(true));
    if (endpoint.address().is_v6()) acceptor->set_option(boost::asio::ip::v6_only(true));
    acceptor->bind(endpoint);
    acceptor->listen(backlog);
    return acceptor;
}

}  // namespace mxhook
