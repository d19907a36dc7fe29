// WEBHOOK_FORMAT=parsed (Mailgun's parsed forward, multipart/form-data) and =json (Postmark's
// inbound JSON) against the real binary: the MIME tree walked into body-plain, body-html,
// stripped-*, and attachments with their decoded bytes; the shared corpus compared with
// tests/integration/mime_reference.py (Python's email package); a hand-made message checked
// field by field in both formats; a 25 MB attachment delivered byte for byte in bounded
// memory; WEBHOOK_FORMAT=bogus refused; WEBHOOK_FORMAT=mime unchanged.

#include "harness/corpus.hpp"
#include "harness/fixture.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

extern char** environ;

namespace itest {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// --- small helpers -----------------------------------------------------------------------

constexpr char kBase64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Standard base64; with line_length > 0, CRLF after every line_length characters (MIME).
std::string base64(std::string_view bytes, std::size_t line_length = 0) {
    std::string out;
    out.reserve(bytes.size() / 3 * 4 + bytes.size() / 38 + 8);
    std::size_t column = 0;
    auto put = [&](char c) {
        out += c;
        if (line_length && ++column == line_length) {
            out += "\r\n";
            column = 0;
        }
    };
    std::size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                           static_cast<unsigned char>(bytes[i + 2]);
        put(kBase64[v >> 18]);
        put(kBase64[(v >> 12) & 63]);
        put(kBase64[(v >> 6) & 63]);
        put(kBase64[v & 63]);
    }
    if (i < bytes.size()) {
        unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
        if (i + 1 < bytes.size()) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
        put(kBase64[v >> 18]);
        put(kBase64[(v >> 12) & 63]);
        put(i + 1 < bytes.size() ? kBase64[(v >> 6) & 63] : '=');
        put('=');
    }
    if (line_length && column) out += "\r\n";
    return out;
}

// Strict standard base64 without line breaks (what the json format promises); nullopt
// when `text` is not that.
std::optional<std::string> unbase64(std::string_view text) {
    if (text.size() % 4) return std::nullopt;
    std::string out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        unsigned v = 0;
        int pad = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = text[i + k];
            const char* at = c ? std::strchr(kBase64, c) : nullptr;
            if (c == '=' && i + 4 == text.size() && k >= 2) {
                ++pad;
                v <<= 6;
            } else if (at && pad == 0) {
                v = (v << 6) | static_cast<unsigned>(at - kBase64);
            } else {
                return std::nullopt;
            }
        }
        out += static_cast<char>(v >> 16);
        if (pad < 2) out += static_cast<char>((v >> 8) & 0xFF);
        if (pad < 1) out += static_cast<char>(v & 0xFF);
    }
    return out;
}

std::string crlf_to_lf(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
        out += text[i];
    }
    return out;
}

// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF).
bool valid_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = 0;
        unsigned min = 0, cp = 0;
        if (c < 0x80) {
            ++i;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1, min = 0x80, cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2, min = 0x800, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return false;
        }
        for (std::size_t k = 1; k <= n; ++k) {
            if (i + k >= s.size()) return false;
            const auto d = static_cast<unsigned char>(s[i + k]);
            if ((d & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (d & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += n + 1;
    }
    return true;
}

// Deterministic pseudo-random bytes.
std::string random_bytes(std::size_t n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::string out(n, '\0');
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const std::uint64_t v = rng();
        std::memcpy(out.data() + i, &v, 8);
    }
    for (; i < n; ++i) out[i] = static_cast<char>(rng() & 0xFF);
    return out;
}

std::vector<std::string> lines_of(std::string_view block) {
    std::vector<std::string> lines;
    std::size_t pos = 0;
    while (pos <= block.size()) {
        std::size_t end = block.find("\r\n", pos);
        if (end == std::string_view::npos) end = block.size();
        lines.emplace_back(block.substr(pos, end - pos));
        pos = end + 2;
    }
    return lines;
}

bool has_line(std::string_view block, const std::string& line) {
    const auto lines = lines_of(block);
    return std::find(lines.begin(), lines.end(), line) != lines.end();
}

// message-headers / Headers: the daemon's own trace header may or may not come first
// (message_test.cpp); the message's own headers follow in order.
json without_own_trace(json headers, std::string_view (*name_getter)(const json&),
                       std::string_view (*value_getter)(const json&)) {
    if (!headers.empty() && name_getter(headers[0]) == "Received" &&
        value_getter(headers[0]).find("by mx.test") != std::string_view::npos) {
        headers.erase(headers.begin());
    }
    return headers;
}

std::string_view pair_name(const json& h) {
    return h.is_array() && h.size() == 2 && h[0].is_string() ? std::string_view(h[0].get_ref<const std::string&>()) : "";
}
std::string_view pair_value(const json& h) {
    return h.is_array() && h.size() == 2 && h[1].is_string() ? std::string_view(h[1].get_ref<const std::string&>()) : "";
}
std::string_view object_name(const json& h) {
    return h.is_object() && h.contains("Name") && h["Name"].is_string()
               ? std::string_view(h["Name"].get_ref<const std::string&>())
               : "";
}
std::string_view object_value(const json& h) {
    return h.is_object() && h.contains("Value") && h["Value"].is_string()
               ? std::string_view(h["Value"].get_ref<const std::string&>())
               : "";
}

// The request as multipart parts; a failure recorded (and empty) when it is not one.
std::vector<FormPart> parts_of(const WebhookRequest& request) {
    const auto boundary = multipart_boundary(request.header("Content-Type"));
    if (!boundary) {
        ADD_FAILURE() << "not multipart/form-data: Content-Type " << request.header("Content-Type");
        return {};
    }
    try {
        return parse_multipart_parts(request.body, *boundary);
    } catch (const std::exception& e) {
        ADD_FAILURE() << "malformed multipart body: " << e.what();
        return {};
    }
}

std::string value_of(const std::vector<FormPart>& parts, std::string_view name) {
    const FormPart* part = find_part(parts, name);
    return part ? part->value : std::string();
}

std::vector<std::string> names_of(const std::vector<FormPart>& parts) {
    std::vector<std::string> names;
    for (const auto& part : parts) names.push_back(part.name);
    return names;
}

// --- the reference extractor -------------------------------------------------------------

// Runs mime_reference.py on `paths` (one process for all, 120 s at most, stopped by its
// PID otherwise) and returns its JSON; a failure recorded and null when it does not work.
json run_reference(const fs::path& workdir, const std::vector<fs::path>& paths) {
    const fs::path out_path = workdir / "reference.json";
    const fs::path err_path = workdir / "reference.err";
    std::vector<std::string> args = {MXHOOK_PYTHON3, MXHOOK_MIME_REFERENCE};
    for (const auto& p : paths) args.push_back(p.string());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int out_fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int err_fd = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0 || err_fd < 0) {
        ADD_FAILURE() << "cannot create " << out_path;
        return nullptr;
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) exec_child(parent, out_fd, err_fd, argv.data(), environ);
    ::close(out_fd);
    ::close(err_fd);
    if (pid < 0) {
        ADD_FAILURE() << "fork failed";
        return nullptr;
    }
    int status = 0;
    const bool exited = wait_until([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, std::chrono::seconds(120));
    if (!exited) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        ADD_FAILURE() << MXHOOK_MIME_REFERENCE << " did not finish within 120 s";
        return nullptr;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        ADD_FAILURE() << MXHOOK_PYTHON3 << " " << MXHOOK_MIME_REFERENCE << " failed ("
                      << ExitStatus{status}.describe() << "): " << read_file(err_path);
        return nullptr;
    }
    try {
        return json::parse(read_file(out_path));
    } catch (const std::exception& e) {
        ADD_FAILURE() << "reference output is not JSON: " << e.what();
        return nullptr;
    }
}

// --- the corpus ----------------------------------------------------------------------------

struct CorpusFile {
    std::string name;   // relative to the corpus root
    std::string bytes;  // as sent (CRLF)
    fs::path copy;      // those bytes, for the reference extractor
    json reference;
    std::string id;
    std::string error;
};

// Corpus messages whose MIME structure Python's email package and the daemon's parser may
// legitimately read differently (deliberately broken input), by file name relative to the
// corpus root, with the reason. Their delivery is still checked; their contents are not.
const std::map<std::string, std::string> kKnownDifferences = {
    {"mikel-mail/error_emails/multiple_content_types.eml",
     "two Content-Type fields (multipart/alternative, then text/plain): Python takes the first, "
     "the daemon the last"},
    {"mikel-mail/plain_emails/raw_email_incorrect_header.eml",
     "an invalid header line (\"quite Delivered-To: ...\") ends Python's header section there; the "
     "daemon reads on"},
    {"mikel-mail/rfc2822/example13.eml",
     "RFC 2822 obsolete syntax (\"To    : Mary Smith\", white space before the colon) ends Python's "
     "compat32 header section; the daemon reads it as a header"},
    {"mikel-mail/mime_emails/raw_email4.eml",
     "its close delimiter is malformed (\"--boundary-\"), so its last part (without header lines) runs "
     "to the end of the message: Python drops the final CRLF there, the daemon keeps it (2 bytes)"},
    // An RFC 2231 filename declared iso-2022-jp holding the byte 0x8A, which that charset
    // lacks: GMime keeps the byte, which mxhook then reads as windows-1252 ("Dij\u0160at", valid
    // UTF-8); Python replaces it with U+FFFD. Neither is the sender's intent.
    {"mikel-mail/attachment_emails/attachment_with_encoded_name.eml",
     "undecodable byte in an iso-2022-jp RFC 2231 filename: windows-1252 here, U+FFFD in Python"},
    {"mikel-mail/plain_emails/raw_email8.eml",
     "undecodable byte in an iso-2022-jp RFC 2231 filename: windows-1252 here, U+FFFD in Python"},
};

constexpr const char* kEnvelopeFrom = "corpus@example.org";
constexpr const char* kEnvelopeTo = "user@example.com";

class ParsedPayloadTest : public IntegrationTest {
protected:
    // The corpus as sent, each file's copy written under the temp dir and described by the
    // reference extractor. Skips (empty) when there is no corpus.
    std::vector<CorpusFile> load_corpus() {
        const fs::path root = corpus_root();
        std::vector<CorpusFile> files;
        if (!fs::is_directory(root)) return files;
        for (const auto& entry : fs::recursive_directory_iterator(root)) {
            if (!entry.is_regular_file()) continue;
            const std::string base = entry.path().filename().string();
            if (base == "README.md" || base == "LICENSE") continue;
            CorpusFile f;
            f.name = fs::relative(entry.path(), root).string();
            f.bytes = as_crlf(read_file(entry.path()));
            files.push_back(std::move(f));
        }
        std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
        std::vector<fs::path> copies;
        for (std::size_t i = 0; i < files.size(); ++i) {
            files[i].copy = tmp_.path() / "corpus" / (std::to_string(i) + ".eml");
            write_file(files[i].copy, files[i].bytes);
            copies.push_back(files[i].copy);
        }
        const json reference = run_reference(tmp_.path(), copies);
        for (auto& f : files) {
            if (reference.is_object() && reference.contains(f.copy.string())) f.reference = reference[f.copy.string()];
        }
        return files;
    }

    // Sends every file over 4 sessions; each file's id or error is set.
    void send_all(std::vector<CorpusFile>& files) {
        std::vector<std::string> messages;
        for (const auto& f : files) messages.push_back(f.bytes);
        const auto outcomes = send_concurrently(daemon().smtp_port(), messages, kEnvelopeFrom, kEnvelopeTo);
        for (std::size_t i = 0; i < files.size(); ++i) {
            files[i].id = outcomes[i].id;
            files[i].error = outcomes[i].error;
        }
    }

    // Sends the corpus to a daemon already started, and checks each delivered request with
    // `check` (which returns the problems it found). Records a failure per problem.
    void corpus_round_trip(const std::function<std::vector<std::string>(const CorpusFile&, const WebhookRequest&)>& check) {
        std::vector<CorpusFile> files = load_corpus();
        if (HasFailure()) return;
        if (files.empty()) GTEST_SKIP() << "no corpus at " << corpus_root() << " (set MXHOOK_TEST_CORPUS)";
        std::cerr << "[ corpus   ] " << files.size() << " messages from " << corpus_root() << "\n";
        send_all(files);
        std::size_t queued = 0;
        for (const auto& f : files) queued += f.id.empty() ? 0 : 1;
        hook_.wait_for(queued, std::chrono::seconds(90));
        std::map<std::string, WebhookRequest> by_id;
        for (auto& request : hook_.requests()) by_id.emplace(request.id(), std::move(request));

        std::vector<std::string> failed;
        std::size_t compared = 0;
        for (const auto& f : files) {
            std::vector<std::string> problems;
            if (!f.error.empty()) problems.push_back(f.error);
            else if (f.id.empty()) problems.push_back("never sent");
            else if (!by_id.count(f.id)) problems.push_back("not delivered (id " + f.id + ")");
            else if (by_id[f.id].status != 200) problems.push_back("webhook answered " + std::to_string(by_id[f.id].status));
            else if (!f.reference.is_object() || f.reference.contains("error")) {
                problems.push_back("the reference extractor failed: " + (f.reference.is_object() ? f.reference.dump() : "no output"));
            } else if (kKnownDifferences.count(f.name)) {
                // Delivered; contents deliberately not compared (see kKnownDifferences).
            } else {
                ++compared;
                try {
                    problems = check(f, by_id[f.id]);
                } catch (const std::exception& e) {  // a key of the wrong type, say
                    problems.push_back(std::string("unexpected payload: ") + e.what());
                }
            }
            if (!problems.empty()) {
                failed.push_back(f.name);
                std::string text;
                for (const auto& p : problems) text += "\n    " + p;
                ADD_FAILURE() << f.name << ":" << text;
            }
        }
        std::string list;
        for (const auto& name : failed) list += "\n  " + name;
        std::cerr << "[ corpus   ] " << compared << " compared with the reference, " << kKnownDifferences.size()
                  << " known differences delivered only\n";
        EXPECT_TRUE(failed.empty()) << failed.size() << " of " << files.size() << " corpus messages failed:" << list;
    }
};

// The reference's attachments (leaves that are neither body), in walk order.
std::vector<json> reference_attachments(const json& reference) {
    std::vector<json> out;
    for (const auto& leaf : reference["leaves"]) {
        if (leaf["role"] == "attachment") out.push_back(leaf);
    }
    return out;
}

std::string expected_filename(const json& leaf, std::size_t k) {
    return leaf["filename"].is_string() ? leaf["filename"].get<std::string>() : "attachment-" + std::to_string(k);
}

std::string with_brackets(std::string cid) {
    if (cid.empty() || cid.front() != '<') cid = "<" + cid + ">";
    return cid;
}

std::string without_brackets(std::string cid) {
    if (cid.size() >= 2 && cid.front() == '<' && cid.back() == '>') cid = cid.substr(1, cid.size() - 2);
    return cid;
}

// body-plain / body-html (TextBody / HtmlBody) against the reference: compared after CRLF
// -> LF when the reference could decode the part exactly (see mime_reference.py); empty
// when the message has no such part.
void compare_text(std::vector<std::string>& problems, const json& reference, const char* key, const std::string& field,
                  const std::string& actual) {
    const json& ref = reference[key];
    if (ref.is_null()) {
        if (!actual.empty()) problems.push_back(field + ": expected empty (no such part), got \"" + printable(actual) + "\"");
        return;
    }
    if (!ref["comparable"].get<bool>()) return;
    const std::string expected = crlf_to_lf(ref["text"].get<std::string>());
    const std::string got = crlf_to_lf(actual);
    if (expected != got) problems.push_back(field + " (charset " + ref["charset"].dump() + "): " + first_difference(expected, got));
}

TEST_F(ParsedPayloadTest, CorpusRoundTripParsed) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_FORMAT", "parsed"}}));
    corpus_round_trip([](const CorpusFile& f, const WebhookRequest& request) {
        std::vector<std::string> problems;
        const auto boundary = multipart_boundary(request.header("Content-Type"));
        if (!boundary) return std::vector<std::string>{"Content-Type " + request.header("Content-Type")};
        std::vector<FormPart> parts;
        try {
            parts = parse_multipart_parts(request.body, *boundary);
        } catch (const std::exception& e) {
            return std::vector<std::string>{std::string("malformed multipart: ") + e.what()};
        }
        if (find_part(parts, "body-mime")) problems.push_back("body-mime present in parsed format");
        const auto attachments = reference_attachments(f.reference);
        const std::string count = value_of(parts, "attachment-count");
        if (count != std::to_string(attachments.size())) {
            std::string expected;
            for (const auto& a : attachments) expected += " " + a["content_type"].get<std::string>();
            problems.push_back("attachment-count " + count + ", reference has " + std::to_string(attachments.size()) +
                               ":" + expected);
        }
        json cid_map = json::parse(value_of(parts, "content-id-map"), nullptr, false);
        if (!cid_map.is_object()) problems.push_back("content-id-map is not a JSON object: " + value_of(parts, "content-id-map"));
        std::size_t with_cid = 0;
        for (std::size_t k = 1; k <= attachments.size(); ++k) {
            const json& leaf = attachments[k - 1];
            const std::string name = "attachment-" + std::to_string(k);
            const FormPart* part = find_part(parts, name);
            if (!part) {
                problems.push_back(name + " missing (" + leaf["content_type"].get<std::string>() + ")");
                continue;
            }
            if (part->content_type != leaf["content_type"].get<std::string>()) {
                problems.push_back(name + " Content-Type " + part->content_type + ", reference " + leaf["content_type"].get<std::string>());
            }
            const std::string filename = expected_filename(leaf, k);
            if (part->filename != filename) {
                problems.push_back(name + " filename \"" + printable(part->filename.value_or("(none)")) + "\", reference \"" +
                                   printable(filename) + "\"");
            }
            if (leaf["sha256"].is_string() && sha256_hex(part->value) != leaf["sha256"].get<std::string>()) {
                problems.push_back(name + " (" + leaf["content_type"].get<std::string>() + ") bytes differ: " +
                                   std::to_string(part->value.size()) + " bytes, reference " + leaf["length"].dump() +
                                   " bytes; got \"" + printable(part->value, 80) + "\"");
            }
            if (leaf["content_id"].is_string() && cid_map.is_object()) {
                ++with_cid;
                const std::string cid = with_brackets(leaf["content_id"].get<std::string>());
                if (!cid_map.contains(cid) || cid_map[cid] != name) {
                    problems.push_back("content-id-map has no \"" + cid + "\": \"" + name + "\": " + cid_map.dump());
                }
            }
        }
        if (cid_map.is_object() && cid_map.size() != with_cid) {
            problems.push_back("content-id-map has " + std::to_string(cid_map.size()) + " entries, reference " +
                               std::to_string(with_cid) + ": " + cid_map.dump());
        }
        if (find_part(parts, "attachment-" + std::to_string(attachments.size() + 1))) {
            problems.push_back("more attachments than the reference's " + std::to_string(attachments.size()));
        }
        for (const char* field : {"body-plain", "body-html", "stripped-text", "stripped-signature", "stripped-html"}) {
            if (!find_part(parts, field)) problems.push_back(std::string(field) + " missing");
        }
        compare_text(problems, f.reference, "body_plain", "body-plain", value_of(parts, "body-plain"));
        compare_text(problems, f.reference, "body_html", "body-html", value_of(parts, "body-html"));
        return problems;
    });
}

TEST_F(ParsedPayloadTest, CorpusRoundTripJson) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_FORMAT", "json"}, {"WEBHOOK_JSON_RAW_EMAIL", "true"}}));
    corpus_round_trip([](const CorpusFile& f, const WebhookRequest& request) {
        std::vector<std::string> problems;
        if (request.header("Content-Type").rfind("application/json", 0) != 0) {
            problems.push_back("Content-Type " + request.header("Content-Type"));
        }
        json body;
        try {
            body = json::parse(request.body);
        } catch (const std::exception& e) {
            problems.push_back(std::string("body is not JSON (or not UTF-8): ") + e.what());
            return problems;
        }
        if (!body.is_object()) return std::vector<std::string>{"body is not a JSON object"};
        if (body.value("OriginalRecipient", "") != kEnvelopeTo) problems.push_back("OriginalRecipient " + body["OriginalRecipient"].dump());
        if (!body.contains("Envelope") || body["Envelope"] != json{{"From", kEnvelopeFrom}, {"To", json::array({kEnvelopeTo})}}) {
            problems.push_back("Envelope " + body.value("Envelope", json()).dump());
        }
        // RawEmail: the spooled bytes (mxhook's Received header, then what was sent); exact
        // when those are UTF-8, else only its presence (invalid bytes become U+FFFD).
        if (!body.contains("RawEmail") || !body["RawEmail"].is_string()) {
            problems.push_back("RawEmail missing with WEBHOOK_JSON_RAW_EMAIL=true");
        } else {
            const auto split = split_received(body["RawEmail"].get<std::string>());
            if (!split) problems.push_back("RawEmail does not start with mxhook's Received header");
            else if (valid_utf8(f.bytes) && split->rest != f.bytes) problems.push_back("RawEmail: " + first_difference(f.bytes, split->rest));
        }
        const auto attachments = reference_attachments(f.reference);
        const json list = body.value("Attachments", json());
        if (!list.is_array()) {
            problems.push_back("Attachments is not an array");
            return problems;
        }
        if (list.size() != attachments.size()) {
            problems.push_back("Attachments has " + std::to_string(list.size()) + ", reference " + std::to_string(attachments.size()));
        }
        for (std::size_t k = 1; k <= std::min(list.size(), attachments.size()); ++k) {
            const json& leaf = attachments[k - 1];
            const json& a = list[k - 1];
            const std::string where = "Attachments[" + std::to_string(k - 1) + "] ";
            if (!a.is_object()) {
                problems.push_back(where + "is not an object");
                continue;
            }
            if (a.value("ContentType", "") != leaf["content_type"].get<std::string>()) {
                problems.push_back(where + "ContentType " + a.value("ContentType", json()).dump() + ", reference " + leaf["content_type"].dump());
            }
            if (a.value("Name", "") != expected_filename(leaf, k)) {
                problems.push_back(where + "Name " + a.value("Name", json()).dump() + ", reference " + json(expected_filename(leaf, k)).dump());
            }
            const std::string cid = leaf["content_id"].is_string() ? without_brackets(leaf["content_id"].get<std::string>()) : "";
            if (a.value("ContentID", json()) != cid) problems.push_back(where + "ContentID " + a.value("ContentID", json()).dump() + ", reference \"" + cid + "\"");
            const auto bytes = a.contains("Content") && a["Content"].is_string() ? unbase64(a["Content"].get<std::string>()) : std::nullopt;
            if (!bytes) {
                problems.push_back(where + "Content is not standard base64 without line breaks");
                continue;
            }
            if (!a.contains("ContentLength") || a["ContentLength"] != bytes->size()) {
                problems.push_back(where + "ContentLength " + a.value("ContentLength", json()).dump() + " for " + std::to_string(bytes->size()) + " decoded bytes");
            }
            if (leaf["sha256"].is_string() && sha256_hex(*bytes) != leaf["sha256"].get<std::string>()) {
                problems.push_back(where + "(" + leaf["content_type"].get<std::string>() + ") bytes differ: " + std::to_string(bytes->size()) +
                                   " bytes, reference " + leaf["length"].dump());
            }
        }
        compare_text(problems, f.reference, "body_plain", "TextBody", body.value("TextBody", ""));
        compare_text(problems, f.reference, "body_html", "HtmlBody", body.value("HtmlBody", ""));
        return problems;
    });
}

// --- the hand-made message -----------------------------------------------------------------

struct HandMade {
    std::string png = "\x89PNG\r\n\x1a\n" + random_bytes(700, 1);
    std::string pdf = "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + random_bytes(2000, 2) + "\n%%EOF\n";
    std::string csv = "a,b\r\n1,2";
    std::string html =
        "<html><body><p>Thanks, the caf\xc3\xa9 numbers look right.</p>\r\n"
        "<blockquote type=\"cite\"><p>Are the numbers right?</p></blockquote>\r\n"
        "<p>Alice</p></body></html>";
    std::string message;

    HandMade() {
        message =
            "From: Alice Example <alice+news@example.org>\r\n"
            "To: =?iso-8859-1?q?Bj=F6rn?= <bjorn+sales@example.com>, carol@example.com\r\n"
            "Cc: Dave <dave@example.net>\r\n"
            "Reply-To: replies@example.org\r\n"
            "Subject: =?utf-8?q?Caf=C3=A9_report?=\r\n"
            "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
            "Message-ID: <hand-made-1@example.org>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"outer-boundary\"\r\n"
            "\r\n"
            "This is a multi-part message in MIME format.\r\n"
            "--outer-boundary\r\n"
            "Content-Type: multipart/related; boundary=\"related-boundary\"\r\n"
            "\r\n"
            "--related-boundary\r\n"
            "Content-Type: multipart/alternative; boundary=\"alt-boundary\"\r\n"
            "\r\n"
            "--alt-boundary\r\n"
            "Content-Type: text/plain; charset=iso-8859-1\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n"
            "\r\n"
            "Thanks, the caf=E9 numbers look right.\r\n"
            "\r\n"
            "--=20\r\n"
            "Alice\r\n"
            "Caf=E9 Example Ltd\r\n"
            "\r\n"
            "On Sun, 31 Dec 2023 at 09:00, Bj=F6rn <bjorn@example.com> wrote:\r\n"
            "> Are the numbers right?\r\n"
            "> Bj=F6rn\r\n"
            "--alt-boundary\r\n"
            "Content-Type: text/html; charset=utf-8\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "\r\n" +
            base64(html, 76) +
            "--alt-boundary--\r\n"
            "--related-boundary\r\n"
            "Content-Type: image/png\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "Content-ID: <img1@example.org>\r\n"
            "Content-Disposition: inline; filename=\"logo.png\"\r\n"
            "\r\n" +
            base64(png, 76) +
            "--related-boundary--\r\n"
            "--outer-boundary\r\n"
            "Content-Type: Application/PDF; name=\"resume.pdf\"\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment;\r\n"
            " filename*0*=utf-8''Quarterly%20r%C3%A9sum%C3%A9;\r\n"
            " filename*1*=%202024.pdf\r\n"
            "\r\n" +
            base64(pdf, 76) +
            "--outer-boundary\r\n"
            "Content-Type: text/plain\r\n"
            "Content-Disposition: attachment\r\n"
            "\r\n" +
            csv +
            "\r\n"
            "--outer-boundary\r\n"
            "Content-Type: message/rfc822\r\n"
            "\r\n"
            "From: Eve <eve@example.net>\r\n"
            "Subject: forwarded\r\n"
            "Content-Type: text/plain\r\n"
            "\r\n"
            "Inner text that is not the body.\r\n"
            "--outer-boundary--\r\n";
    }

    static constexpr const char* kSender = "alice+news@example.org";
    const std::vector<std::string> recipients = {"inbox+ticket-42@example.com", "carol@example.com"};

    const std::string body_plain =
        "Thanks, the caf\xc3\xa9 numbers look right.\r\n"
        "\r\n"
        "-- \r\n"
        "Alice\r\n"
        "Caf\xc3\xa9 Example Ltd\r\n"
        "\r\n"
        "On Sun, 31 Dec 2023 at 09:00, Bj\xc3\xb6rn <bjorn@example.com> wrote:\r\n"
        "> Are the numbers right?\r\n"
        "> Bj\xc3\xb6rn";
    const std::string stripped_text = "Thanks, the caf\xc3\xa9 numbers look right.";
    const std::string stripped_signature = "Alice\r\nCaf\xc3\xa9 Example Ltd";
    const std::string stripped_html =
        "<html><body><p>Thanks, the caf\xc3\xa9 numbers look right.</p>\r\n"
        "\r\n"
        "<p>Alice</p></body></html>";
    const std::string pdf_name = "Quarterly r\xc3\xa9sum\xc3\xa9 2024.pdf";

    // message-headers as the mime format lists them (raw values, unfolded).
    json header_pairs() const {
        return json::array({
            json::array({"From", "Alice Example <alice+news@example.org>"}),
            json::array({"To", "=?iso-8859-1?q?Bj=F6rn?= <bjorn+sales@example.com>, carol@example.com"}),
            json::array({"Cc", "Dave <dave@example.net>"}),
            json::array({"Reply-To", "replies@example.org"}),
            json::array({"Subject", "=?utf-8?q?Caf=C3=A9_report?="}),
            json::array({"Date", "Mon, 1 Jan 2024 10:00:00 +0000"}),
            json::array({"Message-ID", "<hand-made-1@example.org>"}),
            json::array({"MIME-Version", "1.0"}),
            json::array({"Content-Type", "multipart/mixed; boundary=\"outer-boundary\""}),
        });
    }
};

void expect_token_and_timestamp(const std::string& timestamp, const std::string& token) {
    EXPECT_TRUE(std::regex_match(timestamp, std::regex("[0-9]{10}"))) << timestamp;
    if (std::regex_match(timestamp, std::regex("[0-9]{10}"))) {
        const auto stamp = std::chrono::system_clock::time_point(std::chrono::seconds(std::stoll(timestamp)));
        EXPECT_LE(std::chrono::abs(stamp - std::chrono::system_clock::now()), std::chrono::seconds(120)) << timestamp;
    }
    EXPECT_TRUE(std::regex_match(token, std::regex("[0-9a-f]{50}"))) << token;
}

TEST_F(ParsedPayloadTest, HandMadeMessageParsed) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_FORMAT", "parsed"}}));
    const HandMade m;
    const std::string id = send_one(m.message, m.recipients, HandMade::kSender);
    ASSERT_FALSE(id.empty());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->header("Content-Length"), std::to_string(request->body.size()));
    const std::vector<FormPart> parts = parts_of(*request);
    ASSERT_FALSE(parts.empty());

    EXPECT_EQ(names_of(parts),
              (std::vector<std::string>{"recipient", "sender", "from", "subject", "message-headers", "timestamp", "token",
                                        "signature", "body-plain", "body-html", "stripped-text", "stripped-signature",
                                        "stripped-html", "attachment-count", "content-id-map", "attachment-1",
                                        "attachment-2", "attachment-3", "attachment-4"}));

    // The fields of today's payload, unchanged.
    EXPECT_EQ(value_of(parts, "recipient"), "inbox+ticket-42@example.com,carol@example.com");
    EXPECT_EQ(value_of(parts, "sender"), HandMade::kSender);
    EXPECT_EQ(value_of(parts, "from"), "Alice Example <alice+news@example.org>");
    EXPECT_EQ(value_of(parts, "subject"), "=?utf-8?q?Caf=C3=A9_report?=");
    const json headers = json::parse(value_of(parts, "message-headers"), nullptr, false);
    ASSERT_TRUE(headers.is_array()) << value_of(parts, "message-headers");
    EXPECT_EQ(without_own_trace(headers, pair_name, pair_value), m.header_pairs()) << headers.dump(1);
    const std::string timestamp = value_of(parts, "timestamp");
    const std::string token = value_of(parts, "token");
    expect_token_and_timestamp(timestamp, token);
    EXPECT_EQ(value_of(parts, "signature"), hmac_sha256_hex(kSigningKey, timestamp + token));

    // The bodies: quoted-printable ISO-8859-1 and base64 UTF-8 decoded, CRLF kept.
    EXPECT_EQ(value_of(parts, "body-plain"), m.body_plain) << first_difference(m.body_plain, value_of(parts, "body-plain"));
    EXPECT_EQ(value_of(parts, "body-html"), m.html) << first_difference(m.html, value_of(parts, "body-html"));
    // Cut at "On ... wrote:", then the signature after "-- " split off; both trimmed.
    EXPECT_EQ(value_of(parts, "stripped-text"), m.stripped_text);
    EXPECT_EQ(value_of(parts, "stripped-signature"), m.stripped_signature);
    EXPECT_EQ(value_of(parts, "stripped-html"), m.stripped_html)
        << first_difference(m.stripped_html, value_of(parts, "stripped-html"));

    EXPECT_EQ(value_of(parts, "attachment-count"), "4");
    const json cid_map = json::parse(value_of(parts, "content-id-map"), nullptr, false);
    EXPECT_EQ(cid_map, (json{{"<img1@example.org>", "attachment-1"}})) << value_of(parts, "content-id-map");

    struct Expected {
        std::string name, filename, type;
        const std::string* bytes;
    };
    const std::vector<Expected> expected = {
        {"attachment-1", "logo.png", "image/png", &m.png},
        {"attachment-2", m.pdf_name, "application/pdf", &m.pdf},
        {"attachment-3", "attachment-3", "text/plain", &m.csv},
        {"attachment-4", "attachment-4", "message/rfc822", nullptr},
    };
    for (const auto& e : expected) {
        SCOPED_TRACE(e.name);
        const FormPart* part = find_part(parts, e.name);
        ASSERT_NE(part, nullptr);
        EXPECT_TRUE(has_line(part->headers, "Content-Disposition: form-data; name=\"" + e.name + "\"; filename=\"" +
                                                e.filename + "\""))
            << part->headers;
        EXPECT_TRUE(has_line(part->headers, "Content-Type: " + e.type)) << part->headers;
        EXPECT_EQ(part->filename.value_or("(none)"), e.filename);
        EXPECT_EQ(part->content_type, e.type);
        if (e.bytes) {
            EXPECT_TRUE(part->value == *e.bytes) << first_difference(*e.bytes, part->value);
        } else {
            // message/rfc822: not descended, its text is not the body; bytes as the parser
            // serialises them, so only their substance is checked.
            EXPECT_NE(part->value.find("Inner text that is not the body."), std::string::npos) << printable(part->value, 400);
            EXPECT_NE(part->value.find("forwarded"), std::string::npos) << printable(part->value, 400);
        }
    }
}

// stripped-text / stripped-signature / stripped-html rules one at a time, the bodies'
// charset fallback, and the 1 MiB limit on stripping.
TEST_F(ParsedPayloadTest, StrippingRulesAndCharsets) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_FORMAT", "parsed"}}));
    struct Case {
        const char* what;
        std::string content_type;
        std::string body;
        std::string body_plain, stripped_text, stripped_signature;
        std::string body_html, stripped_html;
    };
    std::string big;  // over 1 MiB of short lines
    while (big.size() <= 1100 * 1024) big += std::string(76, 'x') + "\r\n";
    const std::vector<Case> cases = {
        {"trailing quote block", "text/plain; charset=utf-8",
         "Sounds good.\r\n\r\n> quoted line\r\n>\r\n> more quoted\r\n\r\n",
         "Sounds good.\r\n\r\n> quoted line\r\n>\r\n> more quoted\r\n\r\n", "Sounds good.", "", "", ""},
        {"inline reply: only the final quote block is cut", "text/plain; charset=utf-8",
         "> q1\r\nanswer1\r\n> q2\r\n> q2b\r\n", "> q1\r\nanswer1\r\n> q2\r\n> q2b\r\n", "> q1\r\nanswer1", "", "", ""},
        {"Outlook's Original Message line", "text/plain; charset=utf-8",
         "See below.\r\n\r\n-----Original Message-----\r\nFrom: x\r\n\r\nold text\r\n",
         "See below.\r\n\r\n-----Original Message-----\r\nFrom: x\r\n\r\nold text\r\n", "See below.", "", "", ""},
        {"plain -- separator", "text/plain", "Hi\r\n--\r\nBob\r\n", "Hi\r\n--\r\nBob\r\n", "Hi", "Bob", "", ""},
        {"no charset: UTF-8 kept, other bytes windows-1252", "text/plain",
         "caf\xc3\xa9 and \x93quoted\x94 \x80 na\xefve\r\n",
         "caf\xc3\xa9 and \xe2\x80\x9cquoted\xe2\x80\x9d \xe2\x82\xac na\xc3\xafve\r\n",
         "caf\xc3\xa9 and \xe2\x80\x9cquoted\xe2\x80\x9d \xe2\x82\xac na\xc3\xafve", "", "", ""},
        {"declared utf-8 with a Latin-1 byte", "text/plain; charset=utf-8", "caf\xe9 cr\xc3\xa8me\r\n",
         "caf\xc3\xa9 cr\xc3\xa8me\r\n", "caf\xc3\xa9 cr\xc3\xa8me", "", "", ""},
        {"unknown charset", "text/plain; charset=x-no-such-charset", "caf\xe9\r\n", "caf\xc3\xa9\r\n", "caf\xc3\xa9", "", "",
         ""},
        {"html only, nested blockquotes", "text/html; charset=utf-8",
         "<p>new</p><blockquote class=\"q\"><blockquote>a</blockquote>b</blockquote><p>end</p>\r\n", "", "", "",
         "<p>new</p><blockquote class=\"q\"><blockquote>a</blockquote>b</blockquote><p>end</p>\r\n",
         "<p>new</p><p>end</p>\r\n"},
        {"over 1 MiB: not stripped", "text/plain; charset=utf-8", big + "-- \r\nsig\r\n> quoted\r\n",
         big + "-- \r\nsig\r\n> quoted\r\n", big + "-- \r\nsig\r\n> quoted\r\n", "", "", ""},
    };
    std::vector<std::string> ids;
    for (const auto& c : cases) {
        const std::string message = std::string("From: a@example.org\r\nTo: b@example.com\r\nSubject: ") + c.what +
                                    "\r\nMIME-Version: 1.0\r\nContent-Type: " + c.content_type +
                                    "\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + c.body;
        ids.push_back(send_one(message));
    }
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const Case& c = cases[i];
        SCOPED_TRACE(c.what);
        if (ids[i].empty()) continue;
        const auto request = request_for(ids[i]);
        if (!request) {
            ADD_FAILURE() << "not delivered";
            continue;
        }
        const auto parts = parts_of(*request);
        auto check = [&](const char* field, const std::string& expected) {
            const std::string actual = value_of(parts, field);
            EXPECT_TRUE(actual == expected) << field << ": " << first_difference(expected, actual);
        };
        check("body-plain", c.body_plain);
        check("stripped-text", c.stripped_text);
        check("stripped-signature", c.stripped_signature);
        check("body-html", c.body_html);
        check("stripped-html", c.stripped_html);
        check("attachment-count", "0");
        check("content-id-map", "{}");
    }
}

TEST_F(ParsedPayloadTest, HandMadeMessageJson) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_FORMAT", "json"}, {"WEBHOOK_JSON_RAW_EMAIL", "true"}}));
    const HandMade m;
    const std::string id = send_one(m.message, m.recipients, HandMade::kSender);
    ASSERT_FALSE(id.empty());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->header("Content-Type").rfind("application/json", 0), 0u) << request->header("Content-Type");
    EXPECT_EQ(request->header("Content-Length"), std::to_string(request->body.size()));

    // Signed over timestamp + token + the body, from the request headers.
    const std::string timestamp = request->header("X-Mxhook-Timestamp");
    const std::string token = request->header("X-Mxhook-Token");
    expect_token_and_timestamp(timestamp, token);
    EXPECT_EQ(request->header("X-Mxhook-Signature"), hmac_sha256_hex(kSigningKey, timestamp + token + request->body));
    EXPECT_NE(request->header("X-Mxhook-Signature"), hmac_sha256_hex(kSigningKey, timestamp + token + request->body + " "));

    json body;
    ASSERT_NO_THROW(body = json::parse(request->body)) << printable(request->body, 400);
    ASSERT_TRUE(body.is_object());

    std::set<std::string> keys;
    for (const auto& item : body.items()) keys.insert(item.key());
    EXPECT_EQ(keys, (std::set<std::string>{"From", "FromName", "FromFull", "To", "ToFull", "Cc", "CcFull", "ReplyTo",
                                           "OriginalRecipient", "Envelope", "Subject", "MessageID", "Date", "MailboxHash",
                                           "TextBody", "HtmlBody", "StrippedTextReply", "Tag", "Headers", "Attachments",
                                           "RawEmail"}));

    EXPECT_EQ(body["From"], "alice+news@example.org");
    EXPECT_EQ(body["FromName"], "Alice Example");
    EXPECT_EQ(body["FromFull"], (json{{"Email", "alice+news@example.org"}, {"Name", "Alice Example"}, {"MailboxHash", "news"}}));
    EXPECT_EQ(body["To"], "Bj\xc3\xb6rn <bjorn+sales@example.com>, carol@example.com");
    EXPECT_EQ(body["ToFull"], json::array({json{{"Email", "bjorn+sales@example.com"}, {"Name", "Bj\xc3\xb6rn"}, {"MailboxHash", "sales"}},
                                           json{{"Email", "carol@example.com"}, {"Name", ""}, {"MailboxHash", ""}}}))
        << body["ToFull"].dump();
    EXPECT_EQ(body["Cc"], "Dave <dave@example.net>");
    EXPECT_EQ(body["CcFull"], json::array({json{{"Email", "dave@example.net"}, {"Name", "Dave"}, {"MailboxHash", ""}}}));
    EXPECT_EQ(body["ReplyTo"], "replies@example.org");
    EXPECT_EQ(body["OriginalRecipient"], "inbox+ticket-42@example.com");
    EXPECT_EQ(body["Envelope"], (json{{"From", HandMade::kSender}, {"To", m.recipients}}));
    EXPECT_EQ(body["Subject"], "Caf\xc3\xa9 report");
    EXPECT_EQ(body["MessageID"], "hand-made-1@example.org");
    EXPECT_EQ(body["Date"], "Mon, 1 Jan 2024 10:00:00 +0000");
    EXPECT_EQ(body["MailboxHash"], "ticket-42");
    EXPECT_EQ(body["TextBody"], m.body_plain);
    EXPECT_EQ(body["HtmlBody"], m.html);
    EXPECT_EQ(body["StrippedTextReply"], m.stripped_text);
    EXPECT_EQ(body["Tag"], "");

    json expected_headers = json::array();
    for (const auto& pair : m.header_pairs()) expected_headers.push_back({{"Name", pair[0]}, {"Value", pair[1]}});
    ASSERT_TRUE(body["Headers"].is_array());
    EXPECT_EQ(without_own_trace(body["Headers"], object_name, object_value), expected_headers) << body["Headers"].dump(1);

    ASSERT_TRUE(body["Attachments"].is_array());
    ASSERT_EQ(body["Attachments"].size(), 4u) << body["Attachments"].dump().substr(0, 2000);
    auto expect_attachment = [&](std::size_t i, const std::string& name, const std::string& type, const std::string& bytes,
                                 const std::string& cid) {
        SCOPED_TRACE(name);
        const json& a = body["Attachments"][i];
        EXPECT_EQ(a, (json{{"Name", name}, {"Content", base64(bytes)}, {"ContentType", type}, {"ContentLength", bytes.size()},
                          {"ContentID", cid}}))
            << a.dump().substr(0, 600);
    };
    expect_attachment(0, "logo.png", "image/png", m.png, "img1@example.org");
    expect_attachment(1, m.pdf_name, "application/pdf", m.pdf, "");
    // Without a filename, the name the parsed format gives it (an assumption of this test:
    // the brief says "same attachments and order as the parsed format").
    expect_attachment(2, "attachment-3", "text/plain", m.csv, "");
    const json& rfc822 = body["Attachments"][3];
    EXPECT_EQ(rfc822.value("ContentType", ""), "message/rfc822");
    EXPECT_EQ(rfc822.value("ContentID", json()), "");
    const auto inner = unbase64(rfc822.value("Content", ""));
    ASSERT_TRUE(inner.has_value()) << "Content is not standard base64";
    EXPECT_EQ(rfc822.value("ContentLength", json()), inner->size());
    EXPECT_NE(inner->find("Inner text that is not the body."), std::string::npos) << printable(*inner, 400);

    // RawEmail: the stored message, i.e. mxhook's Received header then the bytes sent.
    ASSERT_TRUE(body["RawEmail"].is_string());
    const auto split = split_received(body["RawEmail"].get<std::string>());
    ASSERT_TRUE(split.has_value()) << printable(body["RawEmail"].get<std::string>(), 300);
    EXPECT_TRUE(split->rest == m.message) << first_difference(m.message, split->rest);
    EXPECT_NE(split->received.find("id " + id), std::string::npos) << split->received;
}

// RawEmail's invalid UTF-8 becomes U+FFFD; without WEBHOOK_JSON_RAW_EMAIL there is no
// RawEmail, and without a signing key no X-Mxhook-Signature.
TEST_F(ParsedPayloadTest, JsonRawEmailOnlyWhenAskedAndUnsignedWithoutKey) {
    const std::string latin1 =
        "From: a@example.org\r\nTo: b@example.com\r\nSubject: raw\r\n"
        "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\xe9\r\n";
    {
        ASSERT_TRUE(start_daemon({{"WEBHOOK_FORMAT", "json"}, {"WEBHOOK_JSON_RAW_EMAIL", "true"}}));
        const std::string id = send_one(latin1);
        ASSERT_FALSE(id.empty());
        const auto request = request_for(id);
        ASSERT_TRUE(request.has_value());
        json body;
        ASSERT_NO_THROW(body = json::parse(request->body)) << "not JSON, or not valid UTF-8: " << printable(request->body, 400);
        ASSERT_TRUE(body.contains("RawEmail"));
        const auto split = split_received(body["RawEmail"].get<std::string>());
        ASSERT_TRUE(split.has_value());
        std::string expected = latin1;
        expected.replace(expected.find('\xe9'), 1, "\xef\xbf\xbd");
        EXPECT_TRUE(split->rest == expected) << first_difference(expected, split->rest);
        EXPECT_EQ(body.value("TextBody", ""), "caf\xc3\xa9\r\n");
        ASSERT_NO_FATAL_FAILURE(stop_daemon());
    }
    ASSERT_TRUE(start_daemon({{"WEBHOOK_FORMAT", "json"}, {"WEBHOOK_SIGNING_KEY", ""}}));
    const std::string id = send_one(latin1);
    ASSERT_FALSE(id.empty());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    json body;
    ASSERT_NO_THROW(body = json::parse(request->body)) << printable(request->body, 400);
    EXPECT_FALSE(body.contains("RawEmail")) << "RawEmail without WEBHOOK_JSON_RAW_EMAIL=true";
    EXPECT_TRUE(body.contains("TextBody"));
    EXPECT_FALSE(request->has_header("X-Mxhook-Signature")) << "signed without a key";
    expect_token_and_timestamp(request->header("X-Mxhook-Timestamp"), request->header("X-Mxhook-Token"));
    EXPECT_EQ(request->id(), id);
}

// A 25 MiB attachment (random bytes, base64): delivered byte for byte, and the daemon's
// peak resident size grows by no more than 16 MiB over its idle baseline.
TEST_F(ParsedPayloadTest, LargeAttachmentIsStreamed) {
    constexpr std::size_t kBytes = 25u * 1024 * 1024;
    ASSERT_TRUE(start_daemon({{"WEBHOOK_FORMAT", "parsed"},
                              {"SMTP_MAX_MESSAGE_BYTES", std::to_string(64u * 1024 * 1024)},
                              {"SMTP_TIMEOUT_MS", "120000"},
                              {"LOG_LEVEL", "info"}}));
    auto with_attachment = [](const std::string& subject, const std::string& bytes) {
        return "From: a@example.org\r\nTo: b@example.com\r\nSubject: " + subject +
               "\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
               "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
               "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
               "Content-Disposition: attachment; filename=\"random.bin\"\r\n\r\n" +
               base64(bytes, 76) + "--b--\r\n";
    };
    // A first small message warms up what every delivery has once (pool threads, curl, the
    // parser), then the baseline.
    const std::string warm = send_one(with_attachment("warm-up", random_bytes(64 * 1024, 3)));
    ASSERT_FALSE(warm.empty());
    ASSERT_TRUE(request_for(warm).has_value());
    ASSERT_TRUE(spool_drains());
    const long baseline = proc_status_kib(daemon().pid(), "VmHWM");
    ASSERT_GT(baseline, 0);

    const std::string bytes = random_bytes(kBytes, 4);
    const std::string expected_sha = sha256_hex(bytes);
    std::string id;
    {
        const std::string message = with_attachment("large", bytes);
        SmtpClient client(daemon().smtp_port(), std::chrono::seconds(120));
        ASSERT_EQ(client.greeting().code, 220);
        ASSERT_EQ(client.ehlo().code, 250);
        const Reply reply = client.send_message("a@example.org", {"user@example.com"}, message);
        id = queued_id(reply);
        ASSERT_FALSE(id.empty()) << reply;
        client.cmd("QUIT");
    }
    ASSERT_TRUE(hook_.wait_for(2, std::chrono::seconds(120))) << "the large message was not delivered";
    ASSERT_TRUE(spool_drains(std::chrono::seconds(30)));
#ifndef MXHOOK_TEST_ASAN
    const long peak = proc_status_kib(daemon().pid(), "VmHWM");
#endif
    std::optional<WebhookRequest> request;
    for (auto& r : hook_.requests()) {
        if (r.id() == id) request = std::move(r);
    }
    ASSERT_TRUE(request.has_value());
    const auto parts = parts_of(*request);
    const FormPart* part = find_part(parts, "attachment-1");
    ASSERT_NE(part, nullptr) << "fields: " << ::testing::PrintToString(names_of(parts));
    EXPECT_EQ(part->filename.value_or("(none)"), "random.bin");
    EXPECT_EQ(part->content_type, "application/octet-stream");
    EXPECT_EQ(part->value.size(), kBytes);
    EXPECT_EQ(sha256_hex(part->value), expected_sha) << "the 25 MiB attachment is not byte for byte what was sent";
    EXPECT_EQ(value_of(parts, "body-plain"), "See attached.");
    EXPECT_EQ(value_of(parts, "attachment-count"), "1");
#ifndef MXHOOK_TEST_ASAN
    std::cout << "[ info     ] daemon peak resident size " << baseline / 1024 << " MiB idle, " << peak / 1024
              << " MiB after a 25 MiB attachment (+" << (peak - baseline) / 1024 << " MiB)\n";
    EXPECT_LE(peak - baseline, 16L * 1024) << "peak RSS grew by " << (peak - baseline) / 1024 << " MiB (baseline "
                                           << baseline / 1024 << " MiB)";
#endif
}

// WEBHOOK_FORMAT=mime, said explicitly, is today's payload.
TEST_F(ParsedPayloadTest, ExplicitMimeFormatIsUnchanged) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_FORMAT", "mime"}}));
    const HandMade m;
    const std::string id = send_one(m.message, m.recipients, HandMade::kSender);
    ASSERT_FALSE(id.empty());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->header("Content-Type"), "application/x-www-form-urlencoded");
    ASSERT_EQ(request->form_error, "");
    EXPECT_EQ(field_names(request->form),
              (std::vector<std::string>{"recipient", "sender", "from", "subject", "message-headers", "timestamp", "token",
                                        "signature", "body-mime"}));
    const auto split = split_received(request->field("body-mime"));
    ASSERT_TRUE(split.has_value());
    EXPECT_TRUE(split->rest == m.message) << first_difference(m.message, split->rest);
    EXPECT_EQ(request->field("signature"),
              hmac_sha256_hex(kSigningKey, request->field("timestamp") + request->field("token")));
    EXPECT_FALSE(request->has_header("X-Mxhook-Signature"));
}

}  // namespace
}  // namespace itest
