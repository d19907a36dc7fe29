// mime::Message over GMime 3 (Debian's libgmime-3.0): the parser copes with the broken
// mail of the real world (missing boundaries, bad encodings, 8-bit headers) far better
// than a parser of our own would, and its persistent-stream mode keeps part contents on
// disk.

#include "mxhook/mime/message.hpp"

#include "gmime_init.hpp"
#include "mxhook/mime/text.hpp"

#include <boost/algorithm/string/case_conv.hpp>
#include <gmime/gmime.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <system_error>

namespace mxhook::mime {

void init_gmime() {
    // After it, separate objects may be used from separate threads.
    static std::once_flag once;
    std::call_once(once, [] { g_mime_init(); });
}

namespace {

// GMime hands header text over as it decoded it, which for raw 8-bit bytes in a header
// (no RFC 2047 word) can be anything: every string leaves here as valid UTF-8, with the
// text bodies' fallback (windows-1252 for what is not UTF-8).
std::string text(const char* s) { return s ? to_utf8(s, "") : std::string(); }

// Frees a g_malloc'd string into a std::string.
std::string take(char* s) {
    std::string out = text(s);
    g_free(s);
    return out;
}

std::string lower(std::string s) { return boost::algorithm::to_lower_copy(std::move(s)); }

struct Unref {
    void operator()(gpointer object) const {
        if (object) g_object_unref(object);
    }
};
template <class T>
using Ref = std::unique_ptr<T, Unref>;

void collect_mailboxes(InternetAddressList* list, std::vector<Mailbox>& out) {
    if (!list) return;
    const int n = internet_address_list_length(list);
    for (int i = 0; i < n; ++i) {
        InternetAddress* address = internet_address_list_get_address(list, i);
        if (INTERNET_ADDRESS_IS_GROUP(address)) {
            collect_mailboxes(internet_address_group_get_members(INTERNET_ADDRESS_GROUP(address)), out);
        } else if (INTERNET_ADDRESS_IS_MAILBOX(address)) {
            out.push_back({text(internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(address))),
                           text(internet_address_get_name(address))});
        }
    }
}

}  // namespace

struct Message::Impl {
    Ref<GMimeMessage> message;
    std::filesystem::path scratch_dir;
    std::vector<Leaf> leaves;
    std::vector<GMimeObject*> objects;  // leaves' objects, owned by message

    void walk(GMimeObject* object, int depth) {
        if (!object) return;
        // A hostile nesting cannot exhaust the stack (GMime bounds it too).
        if (GMIME_IS_MULTIPART(object) && depth < 64) {
            GMimeMultipart* multipart = GMIME_MULTIPART(object);
            const int n = g_mime_multipart_get_count(multipart);
            for (int i = 0; i < n; ++i) walk(g_mime_multipart_get_part(multipart, i), depth + 1);
            return;
        }
        Leaf leaf;
        if (GMimeContentType* type = g_mime_object_get_content_type(object)) {
            leaf.content_type = lower(take(g_mime_content_type_get_mime_type(type)));
        }
        leaf.charset = text(g_mime_object_get_content_type_parameter(object, "charset"));
        leaf.content_id = text(g_mime_object_get_content_id(object));
        if (GMIME_IS_PART(object)) {
            leaf.filename = text(g_mime_part_get_filename(GMIME_PART(object)));
        } else {
            leaf.filename = text(g_mime_object_get_content_disposition_parameter(object, "filename"));
            if (leaf.filename.empty()) leaf.filename = text(g_mime_object_get_content_type_parameter(object, "name"));
        }
        leaf.embedded_message = GMIME_IS_MESSAGE_PART(object);
        const std::string disposition = lower(text(g_mime_object_get_disposition(object)));
        leaf.attachment = disposition == "attachment" || !leaf.filename.empty();
        leaves.push_back(std::move(leaf));
        objects.push_back(object);
    }

    std::vector<Mailbox> mailboxes(GMimeAddressType type) const {
        std::vector<Mailbox> out;
        collect_mailboxes(g_mime_message_get_addresses(message.get(), type), out);
        return out;
    }

    std::string list_text(GMimeAddressType type) const {
        InternetAddressList* list = g_mime_message_get_addresses(message.get(), type);
        if (!list || internet_address_list_length(list) == 0) return {};
        return take(internet_address_list_to_string(list, nullptr, FALSE));
    }
};

Message::Message(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Message::Message(Message&&) noexcept = default;
Message& Message::operator=(Message&&) noexcept = default;
Message::~Message() = default;

Message Message::open(const std::filesystem::path& path, std::filesystem::path scratch_dir) {
    init_gmime();
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "open " + path.string());
    Ref<GMimeStream> stream(g_mime_stream_fs_new(fd));  // owns fd from here
    Ref<GMimeParser> parser(g_mime_parser_new_with_stream(stream.get()));
    // Parts refer to ranges of the file (it is seekable) instead of holding copies.
    g_mime_parser_set_persist_stream(parser.get(), TRUE);
    auto impl = std::make_unique<Impl>();
    impl->scratch_dir = std::move(scratch_dir);
    impl->message.reset(g_mime_parser_construct_message(parser.get(), nullptr));
    if (!impl->message) {
        // GMime gives up only on a message with no header at all: an empty message
        // object keeps the rest of the code on one path (no bodies, no attachments).
        impl->message.reset(g_mime_message_new(FALSE));
    }
    impl->walk(g_mime_message_get_mime_part(impl->message.get()), 0);
    return Message(std::move(impl));
}

const std::vector<Leaf>& Message::leaves() const { return impl_->leaves; }

namespace {

// Reads a GMime stream to its end into sink, in 64 KiB pieces.
std::uint64_t drain(GMimeStream* stream, const Sink& sink) {
    std::string buffer(64 * 1024, '\0');
    std::uint64_t total = 0;
    for (;;) {
        const ssize_t n = g_mime_stream_read(stream, buffer.data(), buffer.size());
        if (n < 0) throw std::system_error(errno ? errno : EIO, std::generic_category(), "reading a MIME part");
        if (n == 0) break;
        sink(std::string_view(buffer.data(), static_cast<std::size_t>(n)));
        total += static_cast<std::uint64_t>(n);
    }
    return total;
}

}  // namespace

std::uint64_t Message::decode(std::size_t index, const Sink& sink) const {
    GMimeObject* object = impl_->objects.at(index);
    if (GMIME_IS_MESSAGE_PART(object)) {
        GMimeMessage* inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(object));
        if (!inner) return 0;
        // Written back by GMime into an anonymous file, then streamed: an embedded
        // message can be as large as its parent.
        Ref<GMimeStream> file(g_mime_stream_fs_new(open_scratch_file(impl_->scratch_dir)));
        if (g_mime_object_write_to_stream(GMIME_OBJECT(inner), nullptr, file.get()) < 0 ||
            g_mime_stream_flush(file.get()) != 0) {
            throw std::system_error(errno ? errno : EIO, std::generic_category(), "writing an embedded message");
        }
        g_mime_stream_reset(file.get());
        return drain(file.get(), sink);
    }
    if (!GMIME_IS_PART(object)) return 0;
    GMimeDataWrapper* content = g_mime_part_get_content(GMIME_PART(object));
    if (!content) return 0;
    GMimeStream* raw = g_mime_data_wrapper_get_stream(content);
    if (!raw) return 0;
    g_mime_stream_reset(raw);
    Ref<GMimeStream> decoded(g_mime_stream_filter_new(raw));
    const GMimeContentEncoding encoding = g_mime_data_wrapper_get_encoding(content);
    if (encoding == GMIME_CONTENT_ENCODING_BASE64 || encoding == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE ||
        encoding == GMIME_CONTENT_ENCODING_UUENCODE) {
        Ref<GMimeFilter> filter(g_mime_filter_basic_new(encoding, FALSE));
        g_mime_stream_filter_add(GMIME_STREAM_FILTER(decoded.get()), filter.get());
    }
    return drain(decoded.get(), sink);
}

int open_scratch_file(const std::filesystem::path& dir) {
    int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) return fd;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
        throw std::system_error(errno, std::generic_category(), "O_TMPFILE in " + dir.string());
    }
    std::string name = (dir / ".scratch-XXXXXX").string();
    fd = ::mkostemp(name.data(), O_CLOEXEC);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "mkostemp in " + dir.string());
    ::unlink(name.c_str());
    return fd;
}

std::vector<Mailbox> Message::from() const { return impl_->mailboxes(GMIME_ADDRESS_TYPE_FROM); }
std::vector<Mailbox> Message::to() const { return impl_->mailboxes(GMIME_ADDRESS_TYPE_TO); }
std::vector<Mailbox> Message::cc() const { return impl_->mailboxes(GMIME_ADDRESS_TYPE_CC); }
std::vector<Mailbox> Message::reply_to() const { return impl_->mailboxes(GMIME_ADDRESS_TYPE_REPLY_TO); }
std::string Message::to_text() const { return impl_->list_text(GMIME_ADDRESS_TYPE_TO); }
std::string Message::cc_text() const { return impl_->list_text(GMIME_ADDRESS_TYPE_CC); }
std::string Message::reply_to_text() const { return impl_->list_text(GMIME_ADDRESS_TYPE_REPLY_TO); }
std::string Message::subject() const { return text(g_mime_message_get_subject(impl_->message.get())); }
std::string Message::message_id() const { return text(g_mime_message_get_message_id(impl_->message.get())); }
std::string Message::date() const {
    return text(g_mime_object_get_header(GMIME_OBJECT(impl_->message.get()), "Date"));
}

}  // namespace mxhook::mime
