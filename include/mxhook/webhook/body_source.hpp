#pragma once
// The webhook request body: an in-memory prefix (the small form fields) followed by
// the bytes of message.eml, form-encoded (urlencoded) or as they are (multipart, then a
// closing suffix), read from the spool in chunks on the worker pool while curl sends the
// previous chunk. Memory per request stays around two chunks whatever the message size.

#include "mxhook/config.hpp"
#include "mxhook/http/client.hpp"
#include "mxhook/webhook/payload.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/thread_pool.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
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
    // The Mailgun-style payload of `fields` + body-mime. WebhookEncoding::auto_detect
    // reads the message once for its size and its UTF-8 validity and picks urlencoded
    // when it and every field are valid UTF-8, multipart/form-data otherwise.
    static std::shared_ptr<FormBodySource> open(const Fields& fields, WebhookEncoding encoding,
                                                const std::filesystem::path& message,
                                                boost::asio::thread_pool& pool,
                                                boost::asio::any_io_executor io);
    // message.eml as it is, nothing around it (a content scanner's request body).
    static std::shared_ptr<FormBodySource> open_raw(const std::filesystem::path& message, std::string content_type,
                                                    boost::asio::thread_pool& pool, boost::asio::any_io_executor io);
    // A body already written to a file (the parsed and JSON payloads), sent as it is.
    // Takes fd (open for reading, any offset: it is read with pread from 0).
    static std::shared_ptr<FormBodySource> open_file(int fd, std::string content_type, boost::asio::thread_pool& pool,
                                                     boost::asio::any_io_executor io);
    // The Content-Type header value for this body.
    const std::string& content_type() const;
    // When the message fitted in the first read (up to 64 KiB), the whole body is already
    // in memory: hands it over as one string (the source is spent). Posted from memory, it
    // goes out with the request headers in one write, without the read-callback path.
    // Otherwise nullopt, and the source streams as usual.
    std::optional<std::string> take_whole();
    ~FormBodySource() override;

    std::uint64_t size() const override;
    std::optional<std::size_t> read(char* buf, std::size_t n) override;

private:
    FormBodySource() = default;
    struct State;
    // Opens the file, reads it once, lets `frame` set prefix, suffix, content type and
    // encoding (given whether the message is valid UTF-8), and computes the exact size.
    static std::shared_ptr<FormBodySource> open_with(const std::filesystem::path& message,
                                                     boost::asio::thread_pool& pool,
                                                     boost::asio::any_io_executor io,
                                                     const std::function<void(State&, bool)>& frame);
    // inspect: compute the form-encoded size and UTF-8 validity (false: the body is sent
    // as it is, and frame is told it is valid UTF-8).
    static std::shared_ptr<FormBodySource> open_with(std::shared_ptr<State> state, const std::string& name,
                                                     bool inspect, const std::function<void(State&, bool)>& frame);
    std::shared_ptr<State> state_;
};

}  // namespace mxhook::webhook
