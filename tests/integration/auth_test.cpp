// Sender authentication (AUTH_CHECKS: SPF, DKIM, DMARC) through the real binary, as a
// webhook consumer, a decision service and an operator see it. A FakeDns per test is the
// daemon's only DNS server (DNS_SERVERS); messages are signed in the test with a fresh key
// (libopendkim, tests/support/dkim_signer.hpp). libspf2 passes any loopback client, so every
// session comes through the PROXY protocol (SMTP_PROXY_PROTOCOL_FROM=127.0.0.1/32) from
// 192.0.2.10, the address the SPF records authorize or not.
//
// Checked: the Authentication-Results header that body-mime and message.eml start with (one
// method per line, then our Received header, then the client's message byte for byte), the
// payload fields X-Mailgun-Spf / X-Mailgun-Dkim-Check-Result / X-Mxhook-Dmarc, each SPF result
// (and the HELO identity for a null sender), DKIM pass / fail / permerror / none, DMARC
// alignment through SPF or DKIM, the organizational-domain fallback with sp=, forged headers
// claiming our authserv-id removed, the decision API's message.auth and a policy refusing on
// DMARC reject, DNS failures and timeouts as temperror with the message still accepted,
// AUTH_CHECKS=none / spf, configuration errors, meta.json's "verdicts" summary and the
// mxhook_auth_results_total counters.

#include "harness/fixture.hpp"
#include "support/dkim_signer.hpp"
#include "support/fake_dns.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace itest {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using OrderedJson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

constexpr const char* kClientIp = "192.0.2.10";  // the client the PROXY header names
constexpr const char* kHelo = "mail.client.test";

std::string proxy_v1(const std::string& ip = kClientIp) { return "PROXY TCP4 " + ip + " 127.0.0.1 40000 25\r\n"; }

std::string lower(std::string text) {
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return text;
}

// A message with CRLF line ends from `from` (a header value).
std::string message_from(const std::string& from, const std::string& subject = "Auth test",
                         const std::string& body = "Hello there.\r\nSecond line.\r\n") {
    return "From: " + from + "\r\n"
           "To: User <user@example.com>\r\n"
           "Subject: " + subject + "\r\n"
           "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
           "Message-ID: <auth-itest@example.test>\r\n"
           "\r\n" + body;
}

// --- header parsing -------------------------------------------------------------------------------

// The header fields of `message` (up to the blank line): each field raw, CRLFs and
// continuation lines included.
std::vector<std::string> header_fields(const std::string& message) {
    std::vector<std::string> fields;
    std::size_t pos = 0;
    while (pos < message.size()) {
        if (message.compare(pos, 2, "\r\n") == 0) break;  // the blank line
        std::size_t end = pos;
        do {
            const std::size_t eol = message.find("\r\n", end);
            end = eol == std::string::npos ? message.size() : eol + 2;
        } while (end < message.size() && (message[end] == ' ' || message[end] == '\t'));
        fields.push_back(message.substr(pos, end - pos));
        pos = end;
    }
    return fields;
}

std::string field_name(const std::string& field) {
    const auto colon = field.find(':');
    return colon == std::string::npos ? std::string() : field.substr(0, colon);
}

// The authserv-id of a raw Authentication-Results field (a token or a quoted string).
std::string authserv_id_of(const std::string& field) {
    std::size_t i = field.find(':');
    if (i == std::string::npos) return {};
    ++i;
    while (i < field.size() && std::isspace(static_cast<unsigned char>(field[i]))) ++i;
    std::string id;
    if (i < field.size() && field[i] == '"') {
        for (++i; i < field.size() && field[i] != '"'; ++i) id += field[i];
        return id;
    }
    while (i < field.size() && field[i] != ';' && !std::isspace(static_cast<unsigned char>(field[i]))) id += field[i++];
    return id;
}

bool is_ours(const std::string& field) {
    return lower(field_name(field)) == "authentication-results" && lower(authserv_id_of(field)) == lower(kHostname);
}

// body-mime (or message.eml) taken apart: our Authentication-Results header, its methods,
// the Received header after it, and the client's message.
struct Posted {
    std::string body_mime;
    std::string ar;                    // the first field, when it is an Authentication-Results one
    std::string ar_value;              // after "Authentication-Results: ", without the final CRLF
    std::vector<std::string> methods;  // "spf=pass smtp.mailfrom=example.test", ...
    std::string received;
    std::string rest;
    bool received_found = false;
};

Posted take_apart(const std::string& body_mime) {
    Posted p;
    p.body_mime = body_mime;
    std::string after = body_mime;
    const auto fields = header_fields(body_mime);
    if (!fields.empty() && fields.front().rfind("Authentication-Results: ", 0) == 0) {
        p.ar = fields.front();
        p.ar_value = p.ar.substr(24, p.ar.size() - 26);
        std::size_t pos = p.ar_value.find(";\r\n\t");
        while (pos != std::string::npos) {
            const std::size_t next = p.ar_value.find(";\r\n\t", pos + 4);
            p.methods.push_back(p.ar_value.substr(pos + 4, next == std::string::npos ? std::string::npos : next - pos - 4));
            pos = next;
        }
        after = body_mime.substr(p.ar.size());
    }
    if (const auto split = split_received(after)) {
        p.received = split->received;
        p.rest = split->rest;
        p.received_found = true;
    }
    return p;
}


std::string describe(const Posted& p) { return "body-mime begins: \"" + printable(p.body_mime, 600) + "\""; }

std::string joined(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) out += (out.empty() ? "[" : ", ") + item;
    return out + "]";
}



std::string auth_series(const std::string& check, const std::string& result) {
    return "mxhook_auth_results_total{check=\"" + check + "\",result=\"" + result + "\"}";
}

// --- the fixture -------------------------------------------------------------------------------------

class AuthTest : public IntegrationTest {
protected:
    // mxhook with base_env, all three checks, the FakeDns as its only DNS server and the
    // PROXY protocol from 127.0.0.1, plus `overrides` (an empty value unsets). start_daemon()
    // cannot be used: its readiness probe sends no PROXY header. Ready here: a "PROXY
    // UNKNOWN" connection is greeted with 220.
    bool start_auth(const Env& overrides = {}) {
        Env env = base_env(free_port());
        env["SMTP_PROXY_PROTOCOL_FROM"] = "127.0.0.1/32";
        env["DNS_SERVERS"] = dns_.address();
        env["AUTH_CHECKS"] = "spf,dkim,dmarc";
        env = with_overrides(std::move(env), overrides);
        const auto log = tmp_.path() / ("daemon-" + std::to_string(daemons_.size() + 1) + ".log");
        daemons_.push_back(std::make_unique<Daemon>(mxhook_binary(), env, log));
        Daemon& d = *daemons_.back();
        d.start();
        const bool ready = wait_until(
            [&] {
                if (!d.running()) return true;
                SmtpClient probe(d.smtp_port(), 2s);
                if (!probe.connected() || !probe.send_raw("PROXY UNKNOWN\r\n")) return false;
                if (probe.greeting().code != 220) return false;
                probe.cmd("QUIT");
                return true;
            },
            10s, 20ms);
        if (!ready || !d.running()) {
            const auto status = d.wait_exit(0ms);
            ADD_FAILURE() << "mxhook did not greet a PROXY UNKNOWN connection on port " << d.smtp_port()
                          << " within 10 s (" << (status ? status->describe() : std::string("still running")) << ")";
            return false;
        }
        return true;
    }

    // A session from `ip` (through a PROXY header), greeting read and checked, EHLO sent.
    std::unique_ptr<SmtpClient> proxied(const std::string& helo = kHelo, const std::string& ip = kClientIp) {
        auto client = std::make_unique<SmtpClient>(daemon().smtp_port(), 10s);
        EXPECT_TRUE(client->connected()) << client->connect_error();
        EXPECT_TRUE(client->send_raw(proxy_v1(ip)));
        const Reply greeting = client->greeting();
        EXPECT_EQ(greeting.code, 220) << greeting;
        const Reply ehlo = client->ehlo(helo);
        EXPECT_EQ(ehlo.code, 250) << ehlo;
        return client;
    }

    // One message in a session of its own; the final reply.
    Reply send_proxied(const std::string& sender, const std::string& message, const std::string& helo = kHelo) {
        auto client = proxied(helo);
        const Reply reply = client->send_message(sender, {"user@example.com"}, message);
        client->cmd("QUIT");
        return reply;
    }

    // Sends one message and returns the webhook's request for it, taken apart; nullopt
    // (with a failure recorded) when it was not accepted or never posted.
    std::optional<std::pair<WebhookRequest, Posted>> deliver(const std::string& sender, const std::string& message,
                                                             const std::string& helo = kHelo) {
        const Reply reply = send_proxied(sender, message, helo);
        const std::string id = queued_id(reply);
        if (reply.code != 250 || id.empty()) {
            ADD_FAILURE() << "message from <" << sender << "> not accepted: " << reply;
            return std::nullopt;
        }
        auto request = request_for(id);
        if (!request) {
            ADD_FAILURE() << "no webhook request for " << id;
            return std::nullopt;
        }
        Posted posted = take_apart(request->field("body-mime"));
        return std::make_pair(std::move(*request), std::move(posted));
    }

    // A sender domain whose SPF record authorizes the client.
    void spf_pass(const std::string& domain) { dns_.add(domain, "TXT", "v=spf1 ip4:192.0.2.10 -all"); }

    testsupport::FakeDns dns_;
};

// --- 1. SPF ------------------------------------------------------------------------------------------

struct SpfCase {
    const char* name;
    const char* domain;
    const char* record;  // nullptr: no TXT record (the name does not exist)
    bool servfail;
    const char* result;  // in Authentication-Results
    const char* field;   // X-Mailgun-Spf
};

void PrintTo(const SpfCase& c, std::ostream* out) { *out << c.name; }

class AuthSpfTest : public AuthTest, public ::testing::WithParamInterface<SpfCase> {};

TEST_P(AuthSpfTest, ResultReachesTheHeaderAndThePayload) {
    const SpfCase& c = GetParam();
    if (c.record) dns_.add(c.domain, "TXT", c.record);
    if (c.servfail) dns_.set_rcode(c.domain, 2);
    ASSERT_TRUE(start_auth());

    const std::string sender = std::string("bounce@") + c.domain;
    const auto delivered = deliver(sender, message_from(std::string("Sender <sender@") + c.domain + ">"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mailgun-Spf"), c.field);
    ASSERT_FALSE(posted.ar.empty()) << describe(posted);
    ASSERT_EQ(posted.methods.size(), 3u) << posted.ar;
    EXPECT_EQ(posted.methods[0], std::string("spf=") + c.result + " smtp.mailfrom=" + c.domain) << posted.ar;
    EXPECT_GE(dns_.queries_for(c.domain), 1) << "the sender domain's TXT record was never asked for";

    // The three fields follow the signature, in order, and body-mime comes last.
    const auto names = field_names(request.form);
    const auto at = std::find(names.begin(), names.end(), "signature");
    ASSERT_NE(at, names.end()) << joined(names);
    const std::vector<std::string> after(at + 1, names.end());
    EXPECT_EQ(after, (std::vector<std::string>{"X-Mailgun-Spf", "X-Mailgun-Dkim-Check-Result", "X-Mxhook-Dmarc",
                                               "body-mime"}))
        << joined(names);
}

INSTANTIATE_TEST_SUITE_P(
    Auth, AuthSpfTest,
    ::testing::Values(SpfCase{"Pass", "spf-pass.test", "v=spf1 ip4:192.0.2.10 -all", false, "pass", "Pass"},
                      SpfCase{"Fail", "spf-fail.test", "v=spf1 -all", false, "fail", "Fail"},
                      SpfCase{"SoftFail", "spf-softfail.test", "v=spf1 ~all", false, "softfail", "SoftFail"},
                      SpfCase{"Neutral", "spf-neutral.test", "v=spf1 ?all", false, "neutral", "Neutral"},
                      SpfCase{"NoneWithoutRecord", "spf-none.test", nullptr, false, "none", "None"},
                      SpfCase{"NoneWithoutSpfAmongTxt", "spf-othertxt.test", "google-site-verification=abc", false,
                              "none", "None"},
                      SpfCase{"PermErrorIncludeOfMissingDomain", "spf-permerror.test",
                              "v=spf1 include:missing.test -all", false, "permerror", "PermError"},
                      SpfCase{"PermErrorUnknownMechanism", "spf-syntax.test",
                              "v=spf1 ip4:192.0.2.10 frobnicate:x -all", false, "permerror", "PermError"},
                      SpfCase{"TempErrorOnServfail", "spf-servfail.test", nullptr, true, "temperror", "TempError"}),
    [](const ::testing::TestParamInfo<SpfCase>& info) { return std::string(info.param.name); });

TEST_F(AuthTest, NullSenderIsCheckedForTheHeloName) {
    dns_.add("good-helo.test", "TXT", "v=spf1 ip4:192.0.2.10 -all");
    dns_.add("bad-helo.test", "TXT", "v=spf1 -all");
    ASSERT_TRUE(start_auth());

    const auto good = deliver("", message_from("Mailer <postmaster@good-helo.test>"), "good-helo.test");
    ASSERT_TRUE(good.has_value());
    EXPECT_EQ(good->first.field("sender"), "");
    EXPECT_EQ(good->first.field("X-Mailgun-Spf"), "Pass");
    ASSERT_FALSE(good->second.methods.empty()) << describe(good->second);
    EXPECT_EQ(good->second.methods[0], "spf=pass smtp.helo=good-helo.test") << good->second.ar;

    const auto bad = deliver("", message_from("Mailer <postmaster@bad-helo.test>"), "bad-helo.test");
    ASSERT_TRUE(bad.has_value());
    EXPECT_EQ(bad->first.field("X-Mailgun-Spf"), "Fail");
    ASSERT_FALSE(bad->second.methods.empty()) << describe(bad->second);
    EXPECT_EQ(bad->second.methods[0], "spf=fail smtp.helo=bad-helo.test") << bad->second.ar;
}

// --- 2. DKIM -----------------------------------------------------------------------------------------

TEST_F(AuthTest, DkimSignatureWithPublishedKeyPassesAndTheMessageStaysIntact) {
    const auto key = testsupport::generate_dkim_key();
    dns_.add("sel._domainkey.example.test", "TXT", key.public_txt);
    spf_pass("example.test");
    ASSERT_TRUE(start_auth());

    // A body with a dot at a line start, trailing spaces and a long line: the signed bytes
    // must reach the webhook exactly as sent.
    const std::string signed_message = testsupport::dkim_sign(
        message_from("Alice <alice@example.test>", "Signed",
                     "Dear user,\r\n.leading dot\r\ntrailing spaces   \r\n" + std::string(900, 'x') + "\r\n\r\n-- \r\nA\r\n"),
        key, "example.test", "sel");
    ASSERT_EQ(signed_message.rfind("DKIM-Signature: ", 0), 0u);
    const auto delivered = deliver("bounce@example.test", signed_message);
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mailgun-Dkim-Check-Result"), "Pass");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    EXPECT_EQ(posted.methods[1], "dkim=pass header.d=example.test header.s=sel") << posted.ar;
    ASSERT_TRUE(posted.received_found) << describe(posted);
    EXPECT_EQ(posted.rest, with_final_crlf(signed_message)) << first_difference(with_final_crlf(signed_message), posted.rest);
    EXPECT_GE(dns_.queries_for("sel._domainkey.example.test"), 1);
}

// libopendkim 2.11 reports a body changed after signing as DKIM_SIGERROR_BADSIG with the body
// hash mismatched; the header says which.
TEST_F(AuthTest, DkimBodyChangedAfterSigningFails) {
    const auto key = testsupport::generate_dkim_key();
    dns_.add("sel._domainkey.example.test", "TXT", key.public_txt);
    spf_pass("example.test");
    ASSERT_TRUE(start_auth());

    std::string tampered = testsupport::dkim_sign(message_from("Alice <alice@example.test>"), key, "example.test", "sel");
    const auto body = tampered.find("Hello there.");
    ASSERT_NE(body, std::string::npos);
    tampered.replace(body, 12, "Hello THERE!");
    const auto delivered = deliver("bounce@example.test", tampered);
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mailgun-Dkim-Check-Result"), "Fail");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    EXPECT_EQ(posted.methods[1], "dkim=fail (body hash mismatch) header.d=example.test header.s=sel") << posted.ar;
    EXPECT_EQ(posted.rest, with_final_crlf(tampered)) << first_difference(with_final_crlf(tampered), posted.rest);
}

TEST_F(AuthTest, DkimSignatureWithoutPublishedKeyIsPermError) {
    const auto key = testsupport::generate_dkim_key();
    spf_pass("example.test");  // nothing at missing._domainkey.example.test: NXDOMAIN
    ASSERT_TRUE(start_auth());

    const auto delivered = deliver("bounce@example.test", testsupport::dkim_sign(message_from("Alice <alice@example.test>"),
                                                                                key, "example.test", "missing"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mailgun-Dkim-Check-Result"), "Fail");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    const std::string& dkim = posted.methods[1];
    EXPECT_EQ(dkim.rfind("dkim=permerror (", 0), 0u) << posted.ar;
    EXPECT_TRUE(dkim.ends_with(") header.d=example.test header.s=missing")) << posted.ar;
    EXPECT_GE(dns_.queries_for("missing._domainkey.example.test"), 1);
}

TEST_F(AuthTest, UnsignedMessageIsDkimNoneAndFieldFail) {
    spf_pass("example.test");
    ASSERT_TRUE(start_auth());
    const auto delivered = deliver("bounce@example.test", message_from("Alice <alice@example.test>"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mailgun-Dkim-Check-Result"), "Fail");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    EXPECT_EQ(posted.methods[1], "dkim=none") << posted.ar;
}

// --- 3. DMARC ----------------------------------------------------------------------------------------

TEST_F(AuthTest, DmarcPassesWhenTheFromDomainIsTheSpfPassingMailFromDomain) {
    spf_pass("example.test");
    dns_.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject");
    ASSERT_TRUE(start_auth());
    const auto delivered = deliver("bounce@example.test", message_from("Alice <alice@example.test>"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mxhook-Dmarc"), "pass");
    EXPECT_EQ(request.field("X-Mailgun-Spf"), "Pass");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    const std::string& dmarc = posted.methods[2];
    EXPECT_EQ(dmarc.rfind("dmarc=pass", 0), 0u) << posted.ar;
    EXPECT_TRUE(dmarc.ends_with(" header.from=example.test")) << posted.ar;
}

TEST_F(AuthTest, DmarcFailsForAnUnalignedFromUnderReject) {
    spf_pass("other.test");
    dns_.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject");
    ASSERT_TRUE(start_auth());
    const auto delivered = deliver("bounce@other.test", message_from("CEO <ceo@bank.test>"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mailgun-Spf"), "Pass");
    EXPECT_EQ(request.field("X-Mailgun-Dkim-Check-Result"), "Fail");
    EXPECT_EQ(request.field("X-Mxhook-Dmarc"), "fail; p=reject");
    EXPECT_EQ(posted.ar, "Authentication-Results: mx.test;\r\n"
                         "\tspf=pass smtp.mailfrom=other.test;\r\n"
                         "\tdkim=none;\r\n"
                         "\tdmarc=fail (p=reject) header.from=bank.test\r\n")
        << describe(posted);
}

TEST_F(AuthTest, DmarcPassesThroughAnAlignedDkimSignatureWhenSpfFails) {
    const auto key = testsupport::generate_dkim_key();
    dns_.add("sel._domainkey.bank.test", "TXT", key.public_txt);
    dns_.add("bank.test", "TXT", "v=spf1 -all");
    dns_.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject");
    ASSERT_TRUE(start_auth());
    const auto delivered = deliver("bounce@bank.test", testsupport::dkim_sign(message_from("CEO <ceo@bank.test>"), key,
                                                                             "bank.test", "sel"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mailgun-Spf"), "Fail");
    EXPECT_EQ(request.field("X-Mailgun-Dkim-Check-Result"), "Pass");
    EXPECT_EQ(request.field("X-Mxhook-Dmarc"), "pass");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    EXPECT_EQ(posted.methods[0], "spf=fail smtp.mailfrom=bank.test") << posted.ar;
    EXPECT_EQ(posted.methods[1], "dkim=pass header.d=bank.test header.s=sel") << posted.ar;
    EXPECT_EQ(posted.methods[2].rfind("dmarc=pass", 0), 0u) << posted.ar;
    EXPECT_TRUE(posted.methods[2].ends_with(" header.from=bank.test")) << posted.ar;
}

TEST_F(AuthTest, DmarcIsNoneWithoutARecord) {
    spf_pass("norecord.test");
    ASSERT_TRUE(start_auth());
    const auto delivered = deliver("bounce@norecord.test", message_from("A <a@norecord.test>"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mxhook-Dmarc"), "none");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    EXPECT_EQ(posted.methods[2], "dmarc=none header.from=norecord.test") << posted.ar;
    EXPECT_GE(dns_.queries_for("_dmarc.norecord.test"), 1);
}

TEST_F(AuthTest, DmarcFallsBackToTheOrganizationalDomainAndAppliesSp) {
    spf_pass("other.test");
    dns_.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject; sp=quarantine");
    ASSERT_TRUE(start_auth());
    const auto delivered = deliver("bounce@other.test", message_from("A <a@mail.bank.test>"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mxhook-Dmarc"), "fail; p=quarantine");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    EXPECT_EQ(posted.methods[2], "dmarc=fail (p=quarantine) header.from=mail.bank.test") << posted.ar;
    EXPECT_GE(dns_.queries_for("_dmarc.mail.bank.test"), 1);
    EXPECT_GE(dns_.queries_for("_dmarc.bank.test"), 1);
}

TEST_F(AuthTest, DmarcFailUnderPolicyNoneSaysPNone) {
    spf_pass("other.test");
    dns_.add("_dmarc.monitor.test", "TXT", "v=DMARC1; p=none; rua=mailto:dmarc@monitor.test");
    ASSERT_TRUE(start_auth());
    const auto delivered = deliver("bounce@other.test", message_from("A <a@monitor.test>"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mxhook-Dmarc"), "fail; p=none");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    EXPECT_EQ(posted.methods[2], "dmarc=fail (p=none) header.from=monitor.test") << posted.ar;
}

// --- 4. forged Authentication-Results ------------------------------------------------------------------

TEST_F(AuthTest, ForgedHeadersClaimingOurIdAreRemovedAndOthersKept) {
    spf_pass("example.test");
    ASSERT_TRUE(start_auth());

    const std::string kept_other = "Authentication-Results: other.example; spf=fail smtp.mailfrom=example.test\r\n";
    const std::string kept_lookalike = "Authentication-Results: mx.testing; dkim=pass header.d=bank.test\r\n";
    const std::string forged_plain = "Authentication-Results: mx.test; spf=pass smtp.mailfrom=bank.test\r\n";
    const std::string forged_case = "Authentication-Results: MX.Test; dkim=pass header.d=bank.test\r\n";
    const std::string forged_folded = "Authentication-Results: mx.test;\r\n\tdmarc=pass header.from=bank.test\r\n";
    const std::string forged_lower_name = "authentication-results:   mx.test ; arc=pass\r\n";
    const std::string head = "Received: from relay.example (relay.example [198.51.100.1])\r\n\tby hop.example; Mon, 01 Jan 2024 00:00:00 +0000\r\n";
    const std::string rest_of_headers =
        "From: Alice <alice@example.test>\r\n"
        "To: User <user@example.com>\r\n"
        "Subject: forged\r\n"
        "Message-ID: <forged@example.test>\r\n";
    const std::string body = "\r\nAuthentication-Results: mx.test; spf=pass (in the body: not a header)\r\n";
    const std::string sent = forged_plain + head + kept_other + forged_case + rest_of_headers + forged_folded +
                             kept_lookalike + forged_lower_name + body;
    const std::string expected_rest = head + kept_other + rest_of_headers + kept_lookalike + body;

    const auto delivered = deliver("bounce@example.test", sent);
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    ASSERT_FALSE(posted.ar.empty()) << describe(posted);
    EXPECT_EQ(posted.methods.size(), 3u) << posted.ar;
    ASSERT_TRUE(posted.received_found) << describe(posted);
    EXPECT_EQ(posted.rest, expected_rest) << first_difference(expected_rest, posted.rest);

    // Exactly one field in the header section names us, and it is the first.
    const auto fields = header_fields(posted.body_mime);
    std::vector<std::size_t> ours;
    for (std::size_t i = 0; i < fields.size(); ++i) {
        if (is_ours(fields[i])) ours.push_back(i);
    }
    EXPECT_EQ(ours, std::vector<std::size_t>{0}) << describe(posted);

    // message-headers (the payload's parsed header list) agrees: ours first, no forged one.
    json headers;
    ASSERT_NO_THROW(headers = json::parse(request.field("message-headers"))) << request.field("message-headers");
    ASSERT_TRUE(headers.is_array() && !headers.empty()) << headers.dump();
    EXPECT_EQ(headers[0][0], "Authentication-Results") << headers.dump();
    std::size_t ar_count = 0, ours_count = 0;
    for (const auto& h : headers) {
        if (lower(h[0].get<std::string>()) != "authentication-results") continue;
        ++ar_count;
        if (lower(authserv_id_of("x: " + h[1].get<std::string>())) == "mx.test") ++ours_count;
    }
    EXPECT_EQ(ours_count, 1u) << headers.dump();
    EXPECT_EQ(ar_count, 3u) << "ours plus the two kept ones: " << headers.dump();
}

// --- 5. the decision API ----------------------------------------------------------------------------

TEST_F(AuthTest, DecisionApiSeesAuthAndCanRefuseOnDmarcReject) {
    TestWebhook decider;
    decider.reply_with([](const WebhookRequest& request) {
        WebhookReply reply;
        reply.content_type = "application/json";
        reply.body = R"({"decision":"allow"})";
        try {
            const auto dmarc = json::parse(request.body)["message"]["auth"]["dmarc"];
            if (dmarc["result"] == "fail" && dmarc["policy"] == "reject")
                reply.body = R"({"decision":"deny","message":"DMARC policy says reject"})";
        } catch (const std::exception&) {
            reply.body = R"({"decision":"deny","message":"no auth in the request"})";
        }
        return reply;
    });
    const auto key = testsupport::generate_dkim_key();
    dns_.add("sel._domainkey.example.test", "TXT", key.public_txt);
    spf_pass("other.test");
    spf_pass("example.test");
    dns_.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject");
    dns_.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject");
    ASSERT_TRUE(start_auth({{"WEBHOOK_DECISION_URL", decider.url("/decide")}}));

    auto client = proxied();
    // Unaligned From: under p=reject: refused.
    const Reply refused = client->send_message("bounce@other.test", {"user@example.com"}, message_from("CEO <ceo@bank.test>"));
    EXPECT_EQ(refused.code, 550) << refused;
    EXPECT_EQ(refused.text(), "550 5.7.1 DMARC policy says reject") << refused;
    EXPECT_TRUE(list_dir(pending_dir()).empty());
    EXPECT_TRUE(tmp_items().empty()) << "tmp/ holds " << tmp_items().size();

    // Aligned and signed: allowed, and delivered.
    const std::string signed_message =
        testsupport::dkim_sign(message_from("Alice <alice@example.test>"), key, "example.test", "sel");
    const Reply allowed = client->send_message("bounce@example.test", {"user@example.com"}, signed_message);
    const std::string id = queued_id(allowed);
    ASSERT_EQ(allowed.code, 250) << allowed;
    ASSERT_FALSE(id.empty()) << allowed;
    client->cmd("QUIT");

    ASSERT_TRUE(decider.wait_for(2, 10s));
    const auto asked = decider.requests();
    OrderedJson first, second;
    ASSERT_NO_THROW(first = OrderedJson::parse(asked.at(0).body)) << asked.at(0).body;
    ASSERT_NO_THROW(second = OrderedJson::parse(asked.at(1).body)) << asked.at(1).body;

    const OrderedJson expected_first = OrderedJson::parse(R"({
        "spf": {"result": "pass", "domain": "other.test", "scope": "mailfrom"},
        "dkim": [],
        "dmarc": {"result": "fail", "policy": "reject", "domain": "bank.test"},
        "authenticationResults": "mx.test;\r\n\tspf=pass smtp.mailfrom=other.test;\r\n\tdkim=none;\r\n\tdmarc=fail (p=reject) header.from=bank.test"
    })");
    EXPECT_EQ(first["message"]["auth"], expected_first) << first["message"]["auth"].dump(2);
    EXPECT_EQ(first["message"]["remote"]["ip"], kClientIp);

    const auto delivered = request_for(id);
    ASSERT_TRUE(delivered.has_value());
    const Posted posted = take_apart(delivered->field("body-mime"));
    const OrderedJson& auth = second["message"]["auth"];
    EXPECT_EQ(auth["spf"], OrderedJson::parse(R"({"result":"pass","domain":"example.test","scope":"mailfrom"})"))
        << auth.dump(2);
    EXPECT_EQ(auth["dkim"], OrderedJson::parse(R"([{"result":"pass","domain":"example.test","selector":"sel"}])"))
        << auth.dump(2);
    EXPECT_EQ(auth["dmarc"]["result"], "pass") << auth.dump(2);
    EXPECT_EQ(auth["dmarc"]["domain"], "example.test") << auth.dump(2);
    EXPECT_EQ(auth["authenticationResults"], posted.ar_value) << auth.dump(2);

    // Only the allowed message reached the webhook.
    ASSERT_TRUE(spool_drains());
    const auto all = hook_.requests();
    ASSERT_EQ(all.size(), 1u);
    EXPECT_EQ(all[0].id(), id);
}

TEST_F(AuthTest, DecisionApiGetsTheDkimFailureReason) {
    TestWebhook decider;
    decider.reply_json(R"({"decision":"allow"})");
    const auto key = testsupport::generate_dkim_key();
    dns_.add("sel._domainkey.example.test", "TXT", key.public_txt);
    spf_pass("example.test");
    ASSERT_TRUE(start_auth({{"WEBHOOK_DECISION_URL", decider.url("/decide")}}));

    std::string tampered = testsupport::dkim_sign(message_from("Alice <alice@example.test>"), key, "example.test", "sel");
    tampered.replace(tampered.find("Hello there."), 12, "Hello THERE!");
    ASSERT_EQ(send_proxied("bounce@example.test", tampered).code, 250);
    ASSERT_TRUE(decider.wait_for(1, 10s));
    OrderedJson body;
    ASSERT_NO_THROW(body = OrderedJson::parse(decider.requests().at(0).body));
    EXPECT_EQ(body["message"]["auth"]["dkim"],
              OrderedJson::parse(
                  R"([{"result":"fail","domain":"example.test","selector":"sel","reason":"body hash mismatch"}])"))
        << body["message"]["auth"].dump(2);
    EXPECT_EQ(body["message"]["auth"]["dmarc"]["policy"], nullptr) << "no DMARC record: policy null";
}

// --- 6. DNS failures and timeouts ------------------------------------------------------------------

TEST_F(AuthTest, SilentDnsGivesTempErrorsWithinTheBoundAndTheMessageIsAccepted) {
    const auto key = testsupport::generate_dkim_key();
    dns_.set_silent(true);
    ASSERT_TRUE(start_auth({{"AUTH_DNS_TIMEOUT_MS", "400"}}));

    auto client = proxied();
    ASSERT_EQ(client->cmd("MAIL FROM:<bounce@example.test>").code, 250);
    ASSERT_EQ(client->cmd("RCPT TO:<user@example.com>").code, 250);
    ASSERT_EQ(client->cmd("DATA").code, 354);  // the reverse lookup's bound (3 s) may pass before this
    const std::string message =
        testsupport::dkim_sign(message_from("Alice <alice@example.test>"), key, "example.test", "sel");
    ASSERT_TRUE(client->send_raw(encode_data(message)));
    const auto sent = Clock::now();
    const Reply reply = client->read_reply();
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - sent);
    EXPECT_EQ(reply.code, 250) << reply;
    EXPECT_LT(waited, 5s) << "the end of DATA was answered after " << waited.count() << " ms";
    const std::string id = queued_id(reply);
    ASSERT_FALSE(id.empty()) << reply;
    client->cmd("QUIT");

    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mailgun-Spf"), "TempError");
    EXPECT_EQ(request->field("X-Mailgun-Dkim-Check-Result"), "Fail");
    EXPECT_EQ(request->field("X-Mxhook-Dmarc"), "temperror");
    const Posted posted = take_apart(request->field("body-mime"));
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    EXPECT_EQ(posted.methods[0], "spf=temperror smtp.mailfrom=example.test") << posted.ar;
    EXPECT_EQ(posted.methods[1].rfind("dkim=temperror", 0), 0u) << posted.ar;
    EXPECT_TRUE(posted.methods[1].ends_with("header.d=example.test header.s=sel")) << posted.ar;
    EXPECT_EQ(posted.methods[2], "dmarc=temperror header.from=example.test") << posted.ar;
    EXPECT_EQ(posted.rest, with_final_crlf(message)) << first_difference(with_final_crlf(message), posted.rest);
    EXPECT_GE(dns_.queries_for("example.test"), 1) << "the DNS server was never asked";
}

TEST_F(AuthTest, ServfailEverywhereGivesTempErrorsAndTheMessageIsAccepted) {
    const auto key = testsupport::generate_dkim_key();
    dns_.set_rcode("example.test", 2);
    dns_.set_rcode("sel._domainkey.example.test", 2);
    dns_.set_rcode("_dmarc.example.test", 2);
    ASSERT_TRUE(start_auth());

    const auto delivered = deliver("bounce@example.test", testsupport::dkim_sign(message_from("Alice <alice@example.test>"),
                                                                                key, "example.test", "sel"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;
    EXPECT_EQ(request.field("X-Mailgun-Spf"), "TempError");
    EXPECT_EQ(request.field("X-Mailgun-Dkim-Check-Result"), "Fail");
    EXPECT_EQ(request.field("X-Mxhook-Dmarc"), "temperror");
    ASSERT_EQ(posted.methods.size(), 3u) << describe(posted);
    EXPECT_EQ(posted.methods[0], "spf=temperror smtp.mailfrom=example.test") << posted.ar;
    EXPECT_EQ(posted.methods[1].rfind("dkim=temperror (", 0), 0u) << posted.ar;
    EXPECT_TRUE(posted.methods[1].ends_with(") header.d=example.test header.s=sel")) << posted.ar;
    EXPECT_EQ(posted.methods[2], "dmarc=temperror header.from=example.test") << posted.ar;
}

// --- 7. AUTH_CHECKS=none and a subset -----------------------------------------------------------------

TEST_F(AuthTest, ChecksNoneAddsNoHeaderNoFieldsAndAsksNothing) {
    spf_pass("example.test");
    dns_.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject");
    ASSERT_TRUE(start_auth({{"AUTH_CHECKS", "none"}}));
    const std::string message = message_from("Alice <alice@example.test>");
    const auto delivered = deliver("bounce@example.test", message);
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_TRUE(posted.ar.empty()) << describe(posted);
    EXPECT_EQ(posted.body_mime.rfind("Received: ", 0), 0u) << describe(posted);
    EXPECT_EQ(posted.rest, with_final_crlf(message));
    for (const char* name : {"X-Mailgun-Spf", "X-Mailgun-Dkim-Check-Result", "X-Mxhook-Dmarc"})
        EXPECT_FALSE(request.has_field(name)) << name << " = " << request.field(name);
    EXPECT_EQ(request.field("message-headers").find("Authentication-Results"), std::string::npos)
        << request.field("message-headers");
    EXPECT_EQ(dns_.queries_for("example.test"), 0);
    EXPECT_EQ(dns_.queries_for("_dmarc.example.test"), 0);
}

TEST_F(AuthTest, ChecksSpfAloneGivesOnlyTheSpfFieldAndMethod) {
    spf_pass("example.test");
    dns_.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject");
    ASSERT_TRUE(start_auth({{"AUTH_CHECKS", "spf"}}));
    const auto delivered = deliver("bounce@example.test", message_from("Alice <alice@example.test>"));
    ASSERT_TRUE(delivered.has_value());
    const auto& [request, posted] = *delivered;

    EXPECT_EQ(request.field("X-Mailgun-Spf"), "Pass");
    EXPECT_FALSE(request.has_field("X-Mailgun-Dkim-Check-Result")) << request.field("X-Mailgun-Dkim-Check-Result");
    EXPECT_FALSE(request.has_field("X-Mxhook-Dmarc")) << request.field("X-Mxhook-Dmarc");
    EXPECT_EQ(posted.ar, "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=example.test\r\n")
        << describe(posted);
    EXPECT_EQ(dns_.queries_for("_dmarc.example.test"), 0);
}

// --- 8. configuration errors --------------------------------------------------------------------------

struct BadAuthConfig {
    const char* name;
    const char* variable;  // the variable the error line must name
    Env env;
};

void PrintTo(const BadAuthConfig& bad, std::ostream* out) { *out << bad.name; }

class AuthConfigErrorTest : public IntegrationTest, public ::testing::WithParamInterface<BadAuthConfig> {};

TEST_P(AuthConfigErrorTest, ExitsWithCode2NamingTheVariable) {
    const BadAuthConfig& bad = GetParam();
    const Env env = with_overrides(base_env(free_port()), bad.env);
    const auto err_path = tmp_.path() / "stderr.log";
    Daemon daemon(mxhook_binary(), env, tmp_.path() / "stdout.log", err_path);
    daemon.start();
    const auto status = daemon.wait_exit(5s);
    ASSERT_TRUE(status.has_value()) << "still running after 5 s";
    EXPECT_TRUE(status->exited() && status->code() == 2) << status->describe();

    const std::string err = read_file(err_path);
    std::istringstream lines(err);
    std::string line;
    std::vector<std::string> errors;
    while (std::getline(lines, line)) {
        if (line.find("configuration error") != std::string::npos) errors.push_back(line);
    }
    ASSERT_EQ(errors.size(), 1u) << "stderr:\n" << err;
    EXPECT_NE(errors[0].find(bad.variable), std::string::npos) << errors[0];
}

INSTANTIATE_TEST_SUITE_P(
    Auth, AuthConfigErrorTest,
    ::testing::Values(BadAuthConfig{"UnknownCheck", "AUTH_CHECKS", {{"AUTH_CHECKS", "spf,foo"}}},
                      BadAuthConfig{"NoneWithOthers", "AUTH_CHECKS", {{"AUTH_CHECKS", "none,spf"}}},
                      BadAuthConfig{"MissingPublicSuffixList",
                                    "AUTH_PUBLIC_SUFFIX_LIST",
                                    {{"AUTH_CHECKS", "spf,dkim,dmarc"},
                                     {"AUTH_PUBLIC_SUFFIX_LIST", "/nonexistent/public_suffix_list.dat"}}},
                      BadAuthConfig{"MissingPublicSuffixListByDefaultChecks",
                                    "AUTH_PUBLIC_SUFFIX_LIST",
                                    {{"AUTH_CHECKS", ""},  // unset: the default includes dmarc
                                     {"AUTH_PUBLIC_SUFFIX_LIST", "/nonexistent/public_suffix_list.dat"}}},
                      BadAuthConfig{"NonNumericDnsTimeout", "AUTH_DNS_TIMEOUT_MS",
                                    {{"AUTH_CHECKS", "spf"}, {"AUTH_DNS_TIMEOUT_MS", "soon"}}}),
    [](const ::testing::TestParamInfo<BadAuthConfig>& info) { return std::string(info.param.name); });

TEST_F(AuthTest, MissingPublicSuffixListIsFineWithoutDmarc) {
    spf_pass("example.test");
    ASSERT_TRUE(start_auth({{"AUTH_CHECKS", "spf,dkim"},
                            {"AUTH_PUBLIC_SUFFIX_LIST", "/nonexistent/public_suffix_list.dat"}}));
    const auto delivered = deliver("bounce@example.test", message_from("Alice <alice@example.test>"));
    ASSERT_TRUE(delivered.has_value());
    EXPECT_EQ(delivered->second.ar,
              "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=example.test;\r\n\tdkim=none\r\n")
        << describe(delivered->second);
}

// --- 9. meta.json and metrics -------------------------------------------------------------------------

TEST_F(AuthTest, MetaJsonKeepsTheSummaryAndMetricsCountEachResult) {
    spf_pass("other.test");
    spf_pass("example.test");
    dns_.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject");
    dns_.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject");
    hook_.respond_with([](const WebhookRequest&) { return 500u; });  // items stay in pending/
    const unsigned short metrics_port = free_port();
    ASSERT_TRUE(start_auth({{"METRICS_LISTEN", "127.0.0.1:" + std::to_string(metrics_port)},
                            {"RETRY_INTERVAL_MS", "60000"},
                            {"RETRY_MAX_INTERVAL_MS", "60000"}}));

    std::string before;
    ASSERT_TRUE(wait_until([&] { return !(before = http_get(metrics_port, "/metrics")).empty(); }, 10s))
        << "no answer from /metrics";
    for (const auto& [check, result] : std::vector<std::pair<std::string, std::string>>{
             {"spf", "pass"}, {"dkim", "none"}, {"dmarc", "fail"}, {"dmarc", "pass"}, {"spf", "softfail"}}) {
        EXPECT_EQ(sample_value(before, auth_series(check, result)), 0) << auth_series(check, result) << "\n" << before;
    }

    const Reply failing = send_proxied("bounce@other.test", message_from("CEO <ceo@bank.test>"));
    const std::string failing_id = queued_id(failing);
    ASSERT_FALSE(failing_id.empty()) << failing;
    const Reply passing = send_proxied("bounce@example.test", message_from("Alice <alice@example.test>"));
    const std::string passing_id = queued_id(passing);
    ASSERT_FALSE(passing_id.empty()) << passing;

    const auto failing_meta = meta_after_attempt(failing_id);
    ASSERT_TRUE(failing_meta.has_value()) << "meta.json of " << failing_id;
    EXPECT_EQ((*failing_meta)["verdicts"],
              json::parse(R"({"spf":"pass","dkim":"none","dmarc":"fail","dmarcPolicy":"reject"})"))
        << failing_meta->dump();
    const auto passing_meta = meta_after_attempt(passing_id);
    ASSERT_TRUE(passing_meta.has_value()) << "meta.json of " << passing_id;
    EXPECT_EQ((*passing_meta)["verdicts"], json::parse(R"({"spf":"pass","dkim":"none","dmarc":"pass"})"))
        << passing_meta->dump();
    // meta.json's headers show the message as posted: ours first.
    ASSERT_TRUE((*failing_meta)["headers"].is_array() && !(*failing_meta)["headers"].empty());
    EXPECT_EQ((*failing_meta)["headers"][0][0], "Authentication-Results") << failing_meta->dump();

    // message.eml starts with the same header the webhook was given.
    const auto request = request_for(failing_id);
    ASSERT_TRUE(request.has_value());
    const std::string eml = read_file(pending_dir() / failing_id / "message.eml");
    EXPECT_EQ(eml, request->field("body-mime")) << first_difference(request->field("body-mime"), eml);
    EXPECT_EQ(take_apart(eml).methods,
              (std::vector<std::string>{"spf=pass smtp.mailfrom=other.test", "dkim=none",
                                        "dmarc=fail (p=reject) header.from=bank.test"}));

    const std::string after = http_get(metrics_port, "/metrics");
    const std::map<std::pair<std::string, std::string>, double> expected{
        {{"spf", "pass"}, 2}, {{"dkim", "none"}, 2}, {{"dmarc", "fail"}, 1}, {{"dmarc", "pass"}, 1},
        {{"spf", "fail"}, 0}, {{"dkim", "pass"}, 0}, {{"dmarc", "none"}, 0}, {{"spf", "softfail"}, 0}};
    for (const auto& [labels, value] : expected) {
        const std::string series = auth_series(labels.first, labels.second);
        EXPECT_EQ(sample_value(after, series), value) << series << "\n" << after;
    }
}

}  // namespace
}  // namespace itest
