#include "mxhook/webhook/parsed_payload.hpp"

#include "mxhook/mime/text.hpp"

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <functional>
#include <system_error>

namespace mxhook::webhook {

namespace {

using Emit = std::function<void(std::string_view)>;

// The request body file, written in 64 KiB pieces, and the MAC over what passes through.
class BodyFile {
public:
    BodyFile(int fd, Signer* signer) : fd_(fd), signer_(signer) { buffer_.reserve(kBuffer); }

    void write(std::string_view bytes) {
        if (signer_) signer_->update(bytes);
        size_ += bytes.size();
        if (buffer_.size() + bytes.size() > kBuffer) flush();
        if (bytes.size() >= kBuffer) {
            write_all(bytes);
        } else {
            buffer_ += bytes;
        }
    }

    void flush() {
        write_all(buffer_);
        buffer_.clear();
    }

    std::uint64_t size() const { return size_; }

private:
    static constexpr std::size_t kBuffer = 64 * 1024;

    void write_all(std::string_view bytes) const {
        while (!bytes.empty()) {
            const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
            if (n < 0) {
                if (errno == EINTR) continue;
                throw std::system_error(errno, std::generic_category(), "writing the webhook body");
            }
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
    }

    int fd_;
    Signer* signer_;
    std::string buffer_;
    std::uint64_t size_ = 0;
};

// A text leaf decoded to UTF-8 and streamed to emit. Returns the text too when it is
// short enough to strip (mime::kMaxStrippedBytes), nullopt when it is longer.
std::optional<std::string> stream_text(const mime::Message& message, std::size_t index, const Emit& emit) {
    mime::TextDecoder decoder(message.leaves()[index].charset);
    std::optional<std::string> kept(std::in_place);
    std::string piece;
    const auto pass = [&] {
        emit(piece);
        if (kept && kept->size() + piece.size() <= mime::kMaxStrippedBytes) {
            *kept += piece;
        } else {
            kept.reset();
        }
        piece.clear();
    };
    message.decode(index, [&](std::string_view bytes) {
        decoder.feed(bytes, piece);
        pass();
    });
    decoder.finish(piece);
    pass();
    return kept;
}

// JSON string escaping (nlohmann's, valid UTF-8 in; anything else replaced by U+FFFD).
std::string json_string(std::string_view text) {
    return nlohmann::json(std::string(text)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The pieces of one JSON string value: its quotes around escaped pieces of UTF-8.
class JsonStringWriter {
public:
    explicit JsonStringWriter(BodyFile& out) : out_(out) { out_.write("\""); }
    // The pieces are valid UTF-8 already (a TextDecoder's output), so only '"', '\\' and
    // control characters need escaping: runs between them are written as they are.
    // (nlohmann's serializer re-decodes every code point: a quarter of the CPU of a JSON
    // delivery with a 100 KB text body.)
    void operator()(std::string_view utf8) {
        static constexpr char kHex[] = "0123456789abcdef";
        std::size_t run = 0;
        for (std::size_t i = 0; i < utf8.size(); ++i) {
            const auto c = static_cast<unsigned char>(utf8[i]);
            if (c >= 0x20 && c != '"' && c != '\\') continue;
            out_.write(utf8.substr(run, i - run));
            run = i + 1;
            switch (c) {
                case '"': out_.write("\\\""); break;
                case '\\': out_.write("\\\\"); break;
                case '\n': out_.write("\\n"); break;
                case '\r': out_.write("\\r"); break;
                case '\t': out_.write("\\t"); break;
                default: {
                    const char escaped[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xF]};
                    out_.write(std::string_view(escaped, sizeof escaped));
                }
            }
        }
        out_.write(utf8.substr(run));
    }
    void close() { out_.write("\""); }

private:
    BodyFile& out_;
};

// Standard base64 without line breaks, fed in pieces.
class Base64Writer {
public:
    explicit Base64Writer(BodyFile& out) : out_(out) {}
    void operator()(std::string_view bytes) {
        std::string in = std::move(carry_);
        in += bytes;
        const std::size_t whole = in.size() / 3 * 3;
        encode(std::string_view(in).substr(0, whole));
        carry_.assign(in, whole);
    }
    void close() {
        encode(carry_);
        carry_.clear();
    }

private:
    void encode(std::string_view bytes) {
        if (bytes.empty()) return;
        std::string encoded(4 * ((bytes.size() + 2) / 3) + 1, '\0');
        const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(encoded.data()),
                                      reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
        out_.write(std::string_view(encoded.data(), static_cast<std::size_t>(n)));
    }
    BodyFile& out_;
    std::string carry_;
};

}  // namespace

BodyLayout layout_of(const std::vector<mime::Leaf>& leaves) {
    BodyLayout layout;
    for (std::size_t i = 0; i < leaves.size(); ++i) {
        const mime::Leaf& leaf = leaves[i];
        if (!leaf.attachment && !layout.plain && leaf.content_type == "text/plain") {
            layout.plain = i;
        } else if (!leaf.attachment && !layout.html && leaf.content_type == "text/html") {
            layout.html = i;
        } else {
            layout.attachments.push_back(i);
        }
    }
    return layout;
}

std::string attachment_name(const mime::Leaf& leaf, std::size_t n) {
    return leaf.filename.empty() ? "attachment-" + std::to_string(n) : leaf.filename;
}

std::string mailbox_hash(std::string_view address) {
    const std::string_view local = address.substr(0, address.rfind('@'));
    const auto plus = local.find('+');
    return plus == std::string_view::npos ? std::string() : std::string(local.substr(plus + 1));
}

BuiltBody write_parsed_body(const mime::Message& message, const Fields& fields, int fd) {
    const std::string boundary = make_boundary();
    BodyFile out(fd, nullptr);
    std::string head;
    const auto field = [&](std::string_view name, std::string_view value) {
        head.clear();
        append_part_header(head, boundary, name, binary_type(value));
        out.write(head);
        out.write(value);
        out.write("\r\n");
    };
    // A field whose value is streamed by `body(emit)`.
    const auto streamed_field = [&](std::string_view name, const std::function<void(const Emit&)>& body) {
        head.clear();
        append_part_header(head, boundary, name, "");
        out.write(head);
        body([&out](std::string_view piece) { out.write(piece); });
        out.write("\r\n");
    };
    for (const auto& [name, value] : fields) field(name, value);

    const auto& leaves = message.leaves();
    const BodyLayout layout = layout_of(leaves);
    std::optional<std::string> plain, html;
    streamed_field("body-plain", [&](const Emit& emit) {
        if (layout.plain) plain = stream_text(message, *layout.plain, emit);
    });
    streamed_field("body-html", [&](const Emit& emit) {
        if (layout.html) html = stream_text(message, *layout.html, emit);
    });
    // Texts too long to strip in memory are passed whole, read a second time.
    const std::optional<mime::StrippedReply> reply =
        plain ? std::optional(mime::strip_reply(*plain)) : std::nullopt;
    streamed_field("stripped-text", [&](const Emit& emit) {
        if (reply) {
            emit(reply->text);
        } else if (layout.plain) {
            stream_text(message, *layout.plain, emit);
        }
    });
    field("stripped-signature", reply ? reply->signature : std::string());
    streamed_field("stripped-html", [&](const Emit& emit) {
        if (html) {
            emit(mime::strip_html_quotes(*html));
        } else if (layout.html) {
            stream_text(message, *layout.html, emit);
        }
    });
    field("attachment-count", std::to_string(layout.attachments.size()));
    nlohmann::ordered_json ids = nlohmann::ordered_json::object();
    for (std::size_t n = 1; n <= layout.attachments.size(); ++n) {
        const mime::Leaf& leaf = leaves[layout.attachments[n - 1]];
        if (!leaf.content_id.empty()) ids["<" + leaf.content_id + ">"] = "attachment-" + std::to_string(n);
    }
    field("content-id-map", ids.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    for (std::size_t n = 1; n <= layout.attachments.size(); ++n) {
        const std::size_t index = layout.attachments[n - 1];
        const mime::Leaf& leaf = leaves[index];
        head.clear();
        const std::string name = "attachment-" + std::to_string(n);
        append_part_header(head, boundary, name,
                           leaf.content_type.empty() ? "application/octet-stream" : leaf.content_type,
                           attachment_name(leaf, n));
        out.write(head);
        message.decode(index, [&out](std::string_view bytes) { out.write(bytes); });
        out.write("\r\n");
    }
    out.write(multipart_suffix(boundary).substr(2));  // the last part already ended its line
    out.flush();
    return {multipart_content_type(boundary), {}, out.size()};
}

BuiltBody write_json_body(const mime::Message& message, const spool::Meta& meta, const JsonOptions& options, int fd) {
    const std::string timestamp =
        std::to_string(std::chrono::floor<std::chrono::seconds>(options.now.time_since_epoch()).count());
    const std::string token = make_token();
    std::optional<Signer> signer;
    if (!options.signing_key.empty()) {
        signer.emplace(options.signing_key);
        signer->update(timestamp);
        signer->update(token);
    }
    BodyFile out(fd, signer ? &*signer : nullptr);
    bool first = true;
    const auto key = [&](std::string_view name) {
        out.write(first ? "{" : ",");
        first = false;
        out.write(json_string(name));
        out.write(":");
    };
    const auto value = [&](const nlohmann::ordered_json& v) {
        out.write(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    };
    const auto mailbox = [](const mime::Mailbox& m) {
        return nlohmann::ordered_json{{"Email", m.email}, {"Name", m.name}, {"MailboxHash", mailbox_hash(m.email)}};
    };
    const auto mailboxes = [&](const std::vector<mime::Mailbox>& list) {
        nlohmann::ordered_json array = nlohmann::ordered_json::array();
        for (const auto& m : list) array.push_back(mailbox(m));
        return array;
    };
    const auto streamed = [&](std::string_view name, const std::function<void(const Emit&)>& body) {
        key(name);
        JsonStringWriter string(out);
        body([&string](std::string_view piece) { string(piece); });
        string.close();
    };

    const auto from = message.from();
    const mime::Mailbox sender = from.empty() ? mime::Mailbox{} : from.front();
    key("From"), value(sender.email);
    key("FromName"), value(sender.name);
    key("FromFull"), value(mailbox(sender));
    key("To"), value(message.to_text());
    key("ToFull"), value(mailboxes(message.to()));
    key("Cc"), value(message.cc_text());
    key("CcFull"), value(mailboxes(message.cc()));
    key("ReplyTo"), value(message.reply_to_text());
    const std::string original = meta.recipients.empty() ? std::string() : spool::bare_address(meta.recipients.front());
    key("OriginalRecipient"), value(original);
    nlohmann::ordered_json envelope_to = nlohmann::ordered_json::array();
    for (const auto& r : meta.recipients) envelope_to.push_back(spool::bare_address(r));
    key("Envelope"), value(nlohmann::ordered_json{{"From", spool::bare_address(meta.sender)}, {"To", envelope_to}});
    key("Subject"), value(message.subject());
    key("MessageID"), value(message.message_id());
    key("Date"), value(message.date());
    key("MailboxHash"), value(mailbox_hash(original));

    const auto& leaves = message.leaves();
    const BodyLayout layout = layout_of(leaves);
    std::optional<std::string> plain;
    streamed("TextBody", [&](const Emit& emit) {
        if (layout.plain) plain = stream_text(message, *layout.plain, emit);
    });
    streamed("HtmlBody", [&](const Emit& emit) {
        if (layout.html) stream_text(message, *layout.html, emit);
    });
    streamed("StrippedTextReply", [&](const Emit& emit) {
        if (plain) {
            emit(mime::strip_reply(*plain).text);
        } else if (layout.plain) {
            stream_text(message, *layout.plain, emit);
        }
    });
    key("Tag"), value("");
    nlohmann::ordered_json headers = nlohmann::ordered_json::array();
    for (const auto& [name, text] : meta.headers) headers.push_back({{"Name", name}, {"Value", text}});
    key("Headers"), value(headers);

    key("Attachments");
    out.write("[");
    for (std::size_t n = 1; n <= layout.attachments.size(); ++n) {
        const std::size_t index = layout.attachments[n - 1];
        const mime::Leaf& leaf = leaves[index];
        out.write(n == 1 ? "{" : ",{");
        out.write("\"Name\":" + json_string(attachment_name(leaf, n)) + ",\"Content\":\"");
        Base64Writer base64(out);
        const std::uint64_t length = message.decode(index, [&base64](std::string_view bytes) { base64(bytes); });
        base64.close();
        out.write("\",\"ContentType\":" +
                  json_string(leaf.content_type.empty() ? "application/octet-stream" : leaf.content_type) +
                  ",\"ContentLength\":" + std::to_string(length) + ",\"ContentID\":" + json_string(leaf.content_id) +
                  "}");
    }
    out.write("]");

    if (options.raw_email) {
        streamed("RawEmail", [&](const Emit& emit) {
            const int raw = ::open(options.raw_email->c_str(), O_RDONLY | O_CLOEXEC);
            if (raw < 0) throw std::system_error(errno, std::generic_category(), "open " + options.raw_email->string());
            const auto decoder = mime::TextDecoder::replacing_invalid_utf8();
            std::array<char, 64 * 1024> buffer{};
            std::string piece;
            for (;;) {
                const ssize_t n = ::read(raw, buffer.data(), buffer.size());
                if (n < 0 && errno == EINTR) continue;
                if (n < 0) {
                    const int error = errno;
                    ::close(raw);
                    throw std::system_error(error, std::generic_category(), "reading " + options.raw_email->string());
                }
                if (n == 0) break;
                piece.clear();
                decoder->feed(std::string_view(buffer.data(), static_cast<std::size_t>(n)), piece);
                emit(piece);
            }
            ::close(raw);
            piece.clear();
            decoder->finish(piece);
            emit(piece);
        });
    }
    out.write("}");
    out.flush();

    BuiltBody built{"application/json", {"X-Mxhook-Timestamp: " + timestamp, "X-Mxhook-Token: " + token}, out.size()};
    if (signer) built.headers.push_back("X-Mxhook-Signature: " + signer->hex());
    return built;
}

}  // namespace mxhook::webhook
