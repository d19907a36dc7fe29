#pragma once
// A listening TCP socket, set up the same way for SMTP and for the metrics endpoint.

#include "mxhook/config.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <memory>

namespace mxhook {

// Binds and listens (SO_REUSEADDR; an IPv6 address takes IPv6 only, so [::] next to
// 0.0.0.0 on the same port does not collide). Throws boost::system::system_error.
std::unique_ptr<boost::asio::ip::tcp::acceptor> open_listener(boost::asio::io_context& io, const HostPort& address,
                                                              int backlog);

}  // namespace mxhook
