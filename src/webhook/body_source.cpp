// FormBodySource: "<prefix>" + form_encode(message.eml), or (multipart)
// "<prefix>" + message.eml + "<suffix>", streamed.
//
// The io thread must never wait for the disk, so the file is read ahead on the worker
// pool: while curl sends the current encoded chunk, the next one is read (pread) and
// encoded on a pool thread and handed back to the io executor. At most two encoded
// chunks (each up to 3 x 64 KiB) exist per source.
//
// Threads: State's fixed fields (fd, sizes, executors) are set in open() before the
// source is handed over and only read afterwards; everything else in State is touched
// on the io thread only. The pool job gets its inputs by value and returns its output
// by posting it back: nothing is shared while it runs except the read-only fd.

#include "mxhook/webhook/body_source.hpp"

#include "mxhook/webhook/payload.hpp"

#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <cerrno>
#include <optional>
#include <string_view>
#include <system_error>
#include <utility>

namespace mxhook::webhook {

namespace {

constexpr std::size_t kChunk = 64 * 1024;

// Reads up to len bytes at offset, retrying short reads; returns the count read
// (less than len only at end of file).
std::size_t pread_full(int fd, char* buf, std::size_t len, std::uint64_t offset) {
    std::size_t done = 0;
    while (done < len) {
        const ssize_t k = ::pread(fd, buf + done, len - done, static_cast<off_t>(offset + done));
        if (k < 0) {
            if (errno == EINTR) continue;
            throw std::system_error(errno, std::generic_category(), "pread");
        }
        if (k == 0) break;
        done += static_cast<std::size_t>(k);
    }
    return done;
}

// The pool job's result: one encoded chunk, or why there is none.
struct Chunk {
    std::string encoded;
    std::error_code error;
};

Chunk load_chunk(int fd, std::uint64_t offset, std::size_t len, bool encode) {
    Chunk chunk;
    try {
        std::string raw(len, '\0');
        if (pread_full(fd, raw.data(), len, offset) != len) {
            // The spool file is immutable once committed; a shorter file means
            // someone else touched it and Content-Length can no longer be honoured.
            chunk.error = std::make_error_code(std::errc::io_error);
            return chunk;
        }
        if (!encode) {
            chunk.encoded = std::move(raw);
            return chunk;
        }
        chunk.encoded.reserve(len * 3);
        form_encode_append(chunk.encoded, raw);
    } catch (const std::system_error& ex) {
        chunk.error = ex.code();
    } catch (const std::bad_alloc&) {
        chunk.error = std::make_error_code(std::errc::not_enough_memory);
    }
    return chunk;
}

}  // namespace

struct FormBodySource::State {
    State(boost::asio::thread_pool::executor_type p, boost::asio::any_io_executor i)
        : pool(std::move(p)), io(std::move(i)) {}
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() {
        if (fd >= 0) ::close(fd);
    }

    // Fixed in open().
    int fd = -1;
    std::uint64_t file_size = 0;
    std::uint64_t total_size = 0;
    bool encode = true;  // form-encode the file (urlencoded) or send it as it is (multipart)
    std::string content_type;
    boost::asio::thread_pool::executor_type pool;
    boost::asio::any_io_executor io;

    // io thread only.
    std::string prefix;
    std::size_t prefix_pos = 0;
    std::string suffix;  // after the file (multipart's closing boundary)
    std::size_t suffix_pos = 0;
    std::string current;  // encoded chunk being sent
    std::size_t current_pos = 0;
    std::optional<std::string> next;  // encoded chunk read ahead
    std::uint64_t next_offset = 0;    // file offset of the first byte not yet requested
    bool in_flight = false;           // a pool job is reading next
    std::error_code error;            // a pool job failed; read() reports it
    std::weak_ptr<FormBodySource> owner;

    // Starts reading the next chunk unless one is already ready or on its way.
    static void prefetch(const std::shared_ptr<State>& self) {
        State& s = *self;
        if (s.in_flight || s.next || s.error || s.next_offset >= s.file_size) return;
        const std::uint64_t offset = s.next_offset;
        const auto len = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, s.file_size - offset));
        s.next_offset += len;
        s.in_flight = true;
        // The job holds the state (and so the fd) even if the source is destroyed
        // meanwhile; the result is then simply dropped.
        boost::asio::post(s.pool, [self, offset, len] {
            Chunk chunk = load_chunk(self->fd, offset, len, self->encode);
            boost::asio::post(self->io, [self, chunk = std::move(chunk)]() mutable {
                self->arrived(std::move(chunk));
            });
        });
    }

    void arrived(Chunk chunk) {
        in_flight = false;
        if (chunk.error)
            error = chunk.error;
        else
            next = std::move(chunk.encoded);
        if (auto source = owner.lock()) source->notify_ready();
    }
};

std::shared_ptr<FormBodySource> FormBodySource::open(std::string prefix,
                                                     const std::filesystem::path& message,
                                                     boost::asio::thread_pool& pool,
                                                     boost::asio::any_io_executor io) {
    return open_with(
        message, pool, std::move(io),
        [&prefix](State& state, bool) {
            state.prefix = std::move(prefix);
            state.content_type = "application/x-www-form-urlencoded";
        });
}

std::shared_ptr<FormBodySource> FormBodySource::open(const Fields& fields, WebhookEncoding encoding,
                                                     const std::filesystem::path& message,
                                                     boost::asio::thread_pool& pool,
                                                     boost::asio::any_io_executor io) {
    return open_with(message, pool, std::move(io), [&fields, encoding](State& state, bool message_is_utf8) {
        bool multipart = encoding == WebhookEncoding::multipart;
        if (encoding == WebhookEncoding::auto_detect) {
            multipart = !message_is_utf8 || std::any_of(fields.begin(), fields.end(), [](const auto& field) {
                            return !is_valid_utf8(field.second);
                        });
        }
        if (!multipart) {
            state.prefix = urlencoded_prefix(fields);
            state.content_type = "application/x-www-form-urlencoded";
            return;
        }
        const std::string boundary = make_boundary();
        state.encode = false;
        state.prefix = multipart_prefix(fields, boundary);
        state.suffix = multipart_suffix(boundary);
        state.content_type = multipart_content_type(boundary);
    });
}

std::shared_ptr<FormBodySource> FormBodySource::open_raw(const std::filesystem::path& message,
                                                         std::string content_type, boost::asio::thread_pool& pool,
                                                         boost::asio::any_io_executor io) {
    return open_with(message, pool, std::move(io), [&content_type](State& state, bool) {
        state.encode = false;
        state.content_type = std::move(content_type);
    });
}

std::shared_ptr<FormBodySource> FormBodySource::open_file(int fd, std::string content_type,
                                                          boost::asio::thread_pool& pool,
                                                          boost::asio::any_io_executor io) {
    auto state = std::make_shared<State>(pool.get_executor(), std::move(io));
    state->fd = fd;
    return open_with(std::move(state), "the webhook body", /*inspect=*/false, [&content_type](State& s, bool) {
        s.encode = false;
        s.content_type = std::move(content_type);
    });
}

std::shared_ptr<FormBodySource> FormBodySource::open_with(const std::filesystem::path& message,
                                                          boost::asio::thread_pool& pool,
                                                          boost::asio::any_io_executor io,
                                                          const std::function<void(State&, bool)>& frame) {
    auto state = std::make_shared<State>(pool.get_executor(), std::move(io));
    state->fd = ::open(message.c_str(), O_RDONLY | O_CLOEXEC);
    if (state->fd < 0) {
        throw std::system_error(errno, std::generic_category(), "open " + message.string());
    }
    return open_with(std::move(state), message.string(), /*inspect=*/true, frame);
}

std::shared_ptr<FormBodySource> FormBodySource::open_with(std::shared_ptr<State> state, const std::string& name,
                                                          bool inspect,
                                                          const std::function<void(State&, bool)>& frame) {

    // One pass over the file for the exact encoded size (Content-Length) and whether it is
    // UTF-8. The first chunk is kept, so the transfer starts without waiting for the pool.
    // A file smaller than a chunk (most mail) is read into a buffer of its size plus one
    // byte, which shows the end in the same read: no 64 KiB buffer to clear, no copy.
    struct stat st {};
    if (::fstat(state->fd, &st) != 0) throw std::system_error(errno, std::generic_category(), "fstat " + name);
    const std::size_t buffer = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, static_cast<std::uint64_t>(st.st_size) + 1));
    std::string raw(buffer, '\0');
    std::string first;
    std::uint64_t offset = 0;
    std::uint64_t encoded = 0;
    Utf8Validator utf8;
    for (;;) {
        const std::size_t got = pread_full(state->fd, raw.data(), buffer, offset);
        const std::string_view bytes(raw.data(), got);
        if (inspect) {  // a body sent as it is needs neither
            encoded += form_encoded_size(bytes);
            utf8.feed(bytes);
        }
        const bool last = got < buffer;
        if (offset == 0 && last) {
            raw.resize(got);
            first = std::move(raw);
        } else if (offset == 0) {
            first.assign(bytes);
        }
        offset += got;
        if (last) break;
    }
    frame(*state, utf8.valid());
    state->file_size = offset;
    state->next_offset = first.size();  // the first chunk is sent from memory
    if (state->encode) {
        form_encode_append(state->current, first);
        state->total_size = state->prefix.size() + encoded;
    } else {
        state->current = std::move(first);
        state->total_size = state->prefix.size() + offset + state->suffix.size();
    }

    std::shared_ptr<FormBodySource> source(new FormBodySource());
    state->owner = source;
    source->state_ = std::move(state);
    return source;
}

const std::string& FormBodySource::content_type() const { return state_->content_type; }

std::optional<std::string> FormBodySource::take_whole() {
    State& s = *state_;
    if (s.next_offset < s.file_size || s.prefix_pos != 0 || s.current_pos != 0) return std::nullopt;
    std::string whole = std::move(s.prefix);
    whole.reserve(s.total_size);
    whole += s.current;
    whole += s.suffix;
    s.current.clear();
    s.suffix.clear();
    return whole;
}

FormBodySource::~FormBodySource() = default;

std::uint64_t FormBodySource::size() const { return state_->total_size; }

std::optional<std::size_t> FormBodySource::read(char* buf, std::size_t n) {
    State& s = *state_;
    // Keep one chunk in reserve from the start: curl drains the prefix and the first
    // chunk quickly.
    State::prefetch(state_);

    std::size_t copied = 0;
    auto take = [&](const std::string& from, std::size_t& pos) {
        const std::size_t k = std::min(n - copied, from.size() - pos);
        std::copy_n(from.data() + pos, k, buf + copied);
        pos += k;
        copied += k;
    };
    while (copied < n) {
        if (s.prefix_pos < s.prefix.size()) {
            take(s.prefix, s.prefix_pos);
        } else if (s.current_pos < s.current.size()) {
            take(s.current, s.current_pos);
        } else if (s.next) {
            s.current = std::move(*s.next);
            s.next.reset();
            s.current_pos = 0;
            State::prefetch(state_);
        } else if (s.next_offset >= s.file_size && !s.in_flight && !s.error && s.suffix_pos < s.suffix.size()) {
            take(s.suffix, s.suffix_pos);  // the whole file has been sent
        } else {
            break;
        }
    }
    if (copied > 0) return copied;
    if (s.error) throw std::system_error(s.error, "reading message for webhook body");
    // Only "not yet" while a pool job is running: its arrival calls notify_ready().
    if (s.in_flight) return std::nullopt;
    return 0;
}

}  // namespace mxhook::webhook
