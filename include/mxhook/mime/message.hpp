#pragma once
// A spooled message parsed for the parsed and JSON payloads (WEBHOOK_FORMAT): its
// addresses, subject and the leaves of its MIME tree, each readable as decoded bytes.
//
// GMime parses it with a persistent stream: the parts refer to ranges of message.eml
// instead of holding copies, so memory stays around the size of the headers whatever the
// size of the attachments. Nothing of GMime shows in this header (it is behind Impl).
// Blocking (reads the file): use it on the worker pool.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::mime {

struct Mailbox {
    std::string email;
    std::string name;  // display name, decoded (RFC 2047) to UTF-8; empty when none
};

// One leaf of the MIME tree: a part that is not a multipart container. An embedded
// message (message/rfc822) is a leaf: it is not descended into.
struct Leaf {
    std::string content_type;  // "type/subtype", lower case
    std::string charset;       // the charset parameter as written; empty when none
    std::string filename;      // RFC 2231 / 2047 decoded; empty when none
    std::string content_id;    // without the angle brackets; empty when none
    bool attachment = false;   // Content-Disposition: attachment, or has a filename
    bool embedded_message = false;
};

// Receives decoded content in pieces.
using Sink = std::function<void(std::string_view)>;

class Message {
public:
    // Parses message.eml. Never fails on a malformed message (GMime makes the best of
    // it); throws std::system_error when the file cannot be opened. Anonymous scratch
    // files (O_TMPFILE) go in scratch_dir, which must be on a writable filesystem.
    static Message open(const std::filesystem::path& path, std::filesystem::path scratch_dir);
    Message(Message&&) noexcept;
    Message& operator=(Message&&) noexcept;
    ~Message();

    const std::vector<Leaf>& leaves() const;
    // Streams leaf `index`'s content with its Content-Transfer-Encoding undone (an
    // embedded message: as GMime writes it back). Returns the number of bytes sunk.
    // Throws std::system_error on a read error.
    std::uint64_t decode(std::size_t index, const Sink& sink) const;

    std::vector<Mailbox> from() const;
    std::vector<Mailbox> to() const;
    std::vector<Mailbox> cc() const;
    std::vector<Mailbox> reply_to() const;
    // The address headers as display strings (decoded), empty when absent.
    std::string to_text() const;
    std::string cc_text() const;
    std::string reply_to_text() const;
    std::string subject() const;     // decoded
    std::string message_id() const;  // without the angle brackets
    std::string date() const;        // the Date header as written

private:
    struct Impl;
    explicit Message(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// An anonymous file (O_TMPFILE, or a name unlinked at once where the filesystem lacks it)
// in dir, open for reading and writing: it disappears when closed, crash or not.
// Throws std::system_error.
int open_scratch_file(const std::filesystem::path& dir);

}  // namespace mxhook::mime
