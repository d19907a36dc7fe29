// libFuzzer target over meta.json reading and writing: spool::parse_meta (a SAX reader
// over whatever a spool directory holds: written by mxhook, by haraka-webhook, or edited
// by hand) and spool::to_json / append_json_string (written directly, no document).
//
// Input: the bytes are the meta.json text. Invariants, each an abort() on failure:
// - parse_meta returns or throws std::runtime_error ("meta.json: ..."), nothing else;
// - what it returns writes back (to_json) into text that reads back to the same text;
// - append_json_string of the input writes what nlohmann's dump writes for it.

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

#include "mxhook/spool/json_text.hpp"
#include "mxhook/spool/meta.hpp"

namespace {

[[noreturn]] void fail(const char* what, std::string_view detail) {
    std::fprintf(stderr, "meta_fuzz.cpp: invariant violated: %s\n  detail (%zu bytes): %.*s\n", what,
                 detail.size(), static_cast<int>(std::min<std::size_t>(detail.size(), 400)), detail.data());
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);

    std::string ours;
    mxhook::spool::append_json_string(ours, text);
    if (ours != nlohmann::json(std::string(text)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))
        fail("append_json_string differs from nlohmann's dump", text);

    mxhook::spool::Meta meta;
    try {
        meta = mxhook::spool::parse_meta(text);
    } catch (const std::runtime_error& e) {
        if (std::string_view(e.what()).rfind("meta.json: ", 0) != 0) fail("error without the meta.json: prefix", e.what());
        return 0;
    } catch (...) {
        fail("parse_meta threw something other than std::runtime_error", text);
    }
    const std::string written = mxhook::spool::to_json(meta);
    std::string again;
    try {
        again = mxhook::spool::to_json(mxhook::spool::parse_meta(written));
    } catch (const std::exception& e) {
        fail("what to_json wrote does not read back", written);
    }
    if (again != written) fail("to_json(parse_meta(to_json(m))) != to_json(m)", written);
    return 0;
}
