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

namespace {

// PROXY protocol v2, LOCAL command, no address: what a balancer sends for its own checks.
constexpr unsigned char kProxyV2Local[16] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51,
                                             0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0x00, 0x00};

asio::ip::tcp::endpoint local_endpoint(const std::string& listen_host, unsigned short port) {
    std::string host = listen_host;
    if (host == "0.0.0.0") host = "127.0.0.1";
    if (host == "::") host = "::1";
    return {asio::ip::make_address(host), port};
}

// Connects, writes `request` (may be empty), reads the first line of the answer. Bounded
// by `timeout`; the error says what did not happen.
boost::system::error_code first_line(const asio::ip::tcp::endpoint& endpoint, std::string request,
                                     std::chrono::milliseconds timeout, std::string& line) {
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    asio::streambuf answer;
    boost::system::error_code result = asio::error::timed_out;
    const auto read_line = [&] {
        asio::async_read_until(socket, answer, "\r\n", [&](const boost::system::error_code& read_ec, std::size_t) {
            result = read_ec;
        });
    };
    socket.async_connect(endpoint, [&](const boost::system::error_code& ec) {
        if (ec) {
            result = ec;
            return;
        }
        if (request.empty()) {
            read_line();
            return;
        }
        asio::async_write(socket, asio::buffer(request), [&](const boost::system::error_code& write_ec, std::size_t) {
            if (write_ec) result = write_ec;
            else read_line();
        });
    });
    io.run_for(timeout);
    if (result) return result;
    std::istream in(&answer);
    std::getline(in, line);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return {};
}

int check_smtp(const asio::ip::tcp::endpoint& endpoint, bool proxy_header, std::chrono::milliseconds timeout) {
    std::string line;
    const std::string header = proxy_header ? std::string(reinterpret_cast<const char*>(kProxyV2Local), 16) : "";
    if (const auto ec = first_line(endpoint, header, timeout, line)) {
        std::cerr << "healthcheck: no greeting from " << endpoint << ": " << ec.message();
        if (proxy_header) {
            std::cerr << " (behind a balancer: put 127.0.0.1 in SMTP_PROXY_PROTOCOL_FROM, or set METRICS_LISTEN "
                         "so the check asks /healthz)";
        }
        std::cerr << "\n";
        return 1;
    }
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

int check_http(const asio::ip::tcp::endpoint& endpoint, std::chrono::milliseconds timeout) {
    std::string line;
    if (const auto ec = first_line(endpoint, "GET /healthz HTTP/1.0\r\n\r\n", timeout, line)) {
        std::cerr << "healthcheck: no answer from http://" << endpoint << "/healthz: " << ec.message() << "\n";
        return 1;
    }
    if (line.find(" 200 ") == std::string::npos) {
        std::cerr << "healthcheck: http://" << endpoint << "/healthz answered: " << line << "\n";
        return 1;
    }
    return 0;
}

}  // namespace

int run_healthcheck(const Config& config, std::chrono::milliseconds timeout) {
    const bool proxied = !config.smtp_proxy_protocol_from.empty();
    if (proxied && config.metrics_listen) {
        return check_http(local_endpoint(config.metrics_listen->host, config.metrics_listen->port), timeout);
    }
    if (config.smtp_listen.empty()) {
        std::cerr << "healthcheck: SMTP_LISTEN names no address\n";
        return 1;
    }
    return check_smtp(local_endpoint(config.smtp_listen.front().host, config.smtp_listen.front().port), proxied,
                      timeout);
}

}  // namespace mxhook
