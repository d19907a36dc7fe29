// libFuzzer target over the header handling the session does on every message:
// mail::HeaderScanner (the header section counted while it streams, never kept),
// mail::read_headers (the section read back from the stored message, bounded) and
// mail::parse_headers, plus mail::received_header with hostile HELO / DNS / TLS text.
//
// Input layout (see fuzz/README.md): the last bytes are taken as numbers (the read-back
// bound and a seed for the piece sizes, via FuzzedDataProvider, which reads integers from
// the end); everything before them is the message as the decoder wrote it.
//
// Every invariant that fails calls abort() with a message, so libFuzzer records a crash.

#include <fuzzer/FuzzedDataProvider.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>

#include "mxhook/mail/headers.hpp"
#include "mxhook/mail/received.hpp"

namespace {

[[noreturn]] void fail(int line, const char* what, std::string_view detail) {
    std::fprintf(stderr, "headers_fuzz.cpp:%d: invariant violated: %s\n", line, what);
    if (!detail.empty()) {
        std::fprintf(stderr, "  detail (%zu bytes): \"", detail.size());
        for (const char ch : detail.substr(0, 400)) {
            const auto c = static_cast<unsigned char>(ch);
            if (c == '\r') std::fputs("\\r", stderr);
            else if (c == '\n') std::fputs("\\n", stderr);
            else if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') std::fprintf(stderr, "\\x%02x", c);
            else std::fputc(c, stderr);
        }
        std::fputs(detail.size() > 400 ? "\"...\n" : "\"\n", stderr);
    }
    std::abort();
}

#define CHECK(cond, detail)                         \
    do {                                            \
        if (!(cond)) fail(__LINE__, #cond, detail); \
    } while (0)

// Position just past the first empty line (LF or CRLF), or npos: written plainly here as
// the reference for HeaderScanner and read_headers.
std::size_t first_empty_line_end(std::string_view text) {
    std::size_t line_start = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '\n') continue;
        const std::string_view line = text.substr(line_start, i - line_start);
        if (line.empty() || line == "\r") return i + 1;
        line_start = i + 1;
    }
    return std::string_view::npos;
}

void check_scanner(std::string_view message, std::size_t limit, std::uint32_t seed) {
    // The same bytes fed in one piece and in pieces give the same counts.
    mxhook::mail::HeaderScanner whole;
    whole.feed(message);
    mxhook::mail::HeaderScanner pieces;
    std::uint32_t state = seed | 1u;
    std::size_t pos = 0;
    while (pos < message.size()) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        const std::size_t n = std::min<std::size_t>(message.size() - pos, 1 + state % 64);
        pieces.feed(message.substr(pos, n));
        pos += n;
        CHECK(pieces.bytes() <= pos, message);
    }
    CHECK(whole.ended() == pieces.ended() && whole.bytes() == pieces.bytes(), message);
    CHECK(whole.lines() == pieces.lines() && whole.received() == pieces.received(), message);

    // Against the plain reference: the section up to and including the first empty line.
    const std::size_t end = first_empty_line_end(message);
    const std::string_view section = message.substr(0, end == std::string_view::npos ? message.size() : end);
    std::size_t lfs = 0;
    for (const char c : section) lfs += c == '\n';
    CHECK(whole.ended() == (end != std::string_view::npos), message);
    CHECK(whole.bytes() == section.size(), message);
    CHECK(whole.lines() == lfs - (whole.ended() ? 1 : 0), message);
    const auto parsed = mxhook::mail::parse_headers(section);
    CHECK(whole.received() == mxhook::mail::count_headers(parsed, "Received"), message);
    // Once ended, more input changes nothing.
    if (whole.ended()) {
        whole.feed("Received: more\r\n\r\n");
        CHECK(whole.bytes() == section.size() && whole.received() == pieces.received(), message);
    }

    // Read back with a bound: the section when it fits (or the message ends there), else
    // its complete lines within the bound.
    std::istringstream in{std::string(message)};
    const auto read = mxhook::mail::read_headers(in, limit);
    if (section.size() <= limit) {
        CHECK(read == parsed, message);
    } else {
        const auto last_nl = message.substr(0, limit).rfind('\n');
        const auto cut = message.substr(0, last_nl == std::string_view::npos ? 0 : last_nl + 1);
        CHECK(read == mxhook::mail::parse_headers(cut), message);
    }
}

void check_parse(std::string_view section) {
    const auto headers = mxhook::mail::parse_headers(section);
    std::size_t lines = 0;
    for (const char c : section) lines += c == '\n';
    CHECK(headers.size() <= lines + 1, section);
    for (const auto& [name, value] : headers) {
        CHECK(name.find(':') == std::string::npos, name);
        CHECK(name.find('\n') == std::string::npos && value.find('\n') == std::string::npos, section);
        CHECK(name.empty() || (name.front() != ' ' && name.front() != '\t'), name);
    }
    // The section ends at the first empty line: what follows it is never parsed.
    const std::size_t end = first_empty_line_end(section);
    if (end != std::string_view::npos) {
        const auto head_only = mxhook::mail::parse_headers(section.substr(0, end));
        CHECK(head_only == headers, section);
    }
    // Lookups agree with the list.
    if (!headers.empty()) {
        const auto& first = headers.front();
        CHECK(mxhook::mail::header_value(headers, first.first) == first.second, section);
        CHECK(mxhook::mail::count_headers(headers, first.first) >= 1, section);
    }
}

// Text from the client (HELO), from DNS (PTR name) and from the TLS library can hold any
// byte; the trace header must stay one header whatever they hold.
void check_received(FuzzedDataProvider& fdp, std::string_view message) {
    mxhook::mail::TraceInfo trace;
    trace.helo = fdp.ConsumeRandomLengthString(600);
    trace.client_host = fdp.ConsumeRandomLengthString(300);
    trace.client_ip = fdp.ConsumeRandomLengthString(64);
    trace.tls = fdp.ConsumeRandomLengthString(200);
    trace.recipient = fdp.ConsumeRandomLengthString(300);
    trace.by_host = "mx.example.test";
    trace.protocol = fdp.ConsumeBool() ? "ESMTP" : "SMTP";
    trace.id = "1764090194123-0f8e9c1a-4b2d-4c55-9a11-3e2f5d7c8b90";
    // Any second from 1970 to 2255 (system_clock counts nanoseconds in 64 bits).
    trace.when = std::chrono::system_clock::time_point(
        std::chrono::seconds(fdp.ConsumeIntegralInRange<std::int64_t>(0, 9000000000LL)));

    const std::string header = mxhook::mail::received_header(trace);
    CHECK(header.rfind("Received: from ", 0) == 0, header);
    CHECK(header.size() >= 2 && header.substr(header.size() - 2) == "\r\n", header);
    for (std::size_t i = header.find('\n'); i != std::string::npos; i = header.find('\n', i + 1)) {
        CHECK(i > 0 && header[i - 1] == '\r', header);
        CHECK(i + 1 == header.size() || header[i + 1] == '\t', header);  // only folding
    }
    for (std::size_t i = header.find('\r'); i != std::string::npos; i = header.find('\r', i + 1))
        CHECK(i + 1 < header.size() && header[i + 1] == '\n', header);
    // In front of the message it parses as exactly one more header, named Received.
    const auto alone = mxhook::mail::parse_headers(header);
    CHECK(alone.size() == 1 && alone.front().first == "Received", header);
    const std::string date = mxhook::mail::rfc5322_date(trace.when);
    CHECK(date.size() >= 30 && date.size() <= 31 && date.substr(date.size() - 6) == " +0000", date);
    CHECK(header.substr(header.size() - 2 - date.size(), date.size()) == date, header);

    // Read back from the stored message, bounded as the session bounds it.
    const std::string prefixed = header + std::string(message);
    std::istringstream stored(prefixed);
    const auto headers = mxhook::mail::read_headers(stored, header.size() + 1024);
    CHECK(!headers.empty() && headers.front().first == "Received", prefixed);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider fdp(data, size);
    const auto limit = static_cast<std::size_t>(fdp.ConsumeIntegralInRange<std::uint16_t>(0, 2048));
    const auto seed = fdp.ConsumeIntegral<std::uint32_t>();
    const bool with_trace = fdp.ConsumeBool();
    const std::string message = with_trace ? fdp.ConsumeRandomLengthString(size) : fdp.ConsumeRemainingBytesAsString();

    check_scanner(message, limit, seed);
    check_parse(message);
    if (with_trace) check_received(fdp, message);
    return 0;
}
