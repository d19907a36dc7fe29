#pragma once
// The webhook request body: an in-memory prefix (the small form fields) followed by
// the form-encoded bytes of message.eml, read from the spool in chunks on the worker
// pool while curl sends the previous chunk. Memory per request stays around two
// chunks whatever the message size.

#include "mxhook/http/client.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/thread_pool.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace mxhook::webhook {

class FormBodySource : public http::BodySource,
                       public std::enable_shared_from_this<FormBodySource> {
public:
    // Blocking (reads the file once to compute the exact encoded size): call it on the
    // worker pool. Throws std::system_error when the file cannot be opened or read.
    static std::shared_ptr<FormBodySource> open(std::string prefix,
                                                const std::filesystem::path& message,
                                                boost::asio::thread_pool& pool,
                                                boost::asio::any_io_executor io);
    ~FormBodySource() override;

    std::uint64_t size() const override;
    std::optional<std::size_t> read(char* buf, std::size_t n) override;

private:
    FormBodySource() = default;
    struct State;
    std::shared_ptr<State> state_;
};

}  // namespace mxhook::webhook
