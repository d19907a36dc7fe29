#include "mxhook/healthcheck.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

#include <iostream>
#include <istream>
#include <string>

namespace mxhook {
namespace asio = boost::asio;

int run_healthcheck(const std::vector<ListenAddress>& listen, std::chrono::milliseconds timeout) {
    if (listen.empty()) {
        std::cerr << "healthcheck: SMTP_LISTEN names no address\n";
        return 1;
    }
    std::string host = listen.front().host;
    if (host == "0.0.0.0") host = "127.0.0.1";
    if (host == "::") host = "::1";
    const asio::ip::tcp::endpoint endpoint(asio::ip::make_address(host), listen.front().port);

    // One short-lived io_context with a deadline: the check must end even when the
    // daemon accepts but never answers.
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    asio::streambuf greeting;
    boost::system::error_code result = asio::error::timed_out;
    socket.async_connect(endpoint, [&](const boost::system::error_code& ec) {
        if (ec) {
            result = ec;
            return;
        }
        asio::async_read_until(socket, greeting, "\r\n", [&](const boost::system::error_code& read_ec, std::size_t) {
            result = read_ec;
            if (!read_ec) asio::async_write(socket, asio::buffer("QUIT\r\n", 6), [](auto, auto) {});
        });
    });
    io.run_for(timeout);

    if (result) {
        std::cerr << "healthcheck: no greeting from " << endpoint << ": " << result.message() << "\n";
        return 1;
    }
    std::istream in(&greeting);
    std::string line;
    std::getline(in, line);
    // A draining replica (`mxhook drain`) refuses mail on purpose but is alive: restarting
    // it would cut its drain short.
    if (line.rfind("421 4.3.2", 0) == 0 && line.find("draining") != std::string::npos) {
        std::cerr << "healthcheck: draining\n";
        return 0;
    }
    if (line.rfind("220", 0) != 0) {
        std::cerr << "healthcheck: unexpected greeting from " << endpoint << ": " << line << "\n";
        return 1;
    }
    return 0;
}

}  // namespace mxhook
