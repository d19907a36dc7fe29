// The test support itself: FakeDns answers as c-ares (the daemon's resolver) understands
// them, over UDP and, for big answers, TCP; dkim_sign's signatures verify with libopendkim
// and stop verifying when the body changes.

#include "support/dkim_signer.hpp"
#include "support/fake_dns.hpp"

#include <ares.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <sys/select.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace {

using testsupport::FakeDns;
using namespace std::chrono_literals;

struct Reply {
    bool done = false;
    int status = -1;
    std::vector<unsigned char> abuf;
    int len() const { return static_cast<int>(abuf.size()); }
};

// A c-ares channel that asks only the FakeDns, one query at a time.
class Resolver {
public:
    struct Options {
        int timeout_ms = 1000;
        int tries = 2;
        bool edns = false;  // c-ares 1.18 sends no OPT record unless told to
        bool check_response = true;  // false: ARES_FLAG_NOCHECKRESP
    };
    explicit Resolver(const FakeDns& dns) : Resolver(dns, Options{}) {}
    Resolver(const FakeDns& dns, Options options) {
        ares_library_init(ARES_LIB_INIT_ALL);
        ares_options o{};
        o.timeout = options.timeout_ms;
        o.tries = options.tries;
        o.flags = (options.edns ? ARES_FLAG_EDNS : 0) | (options.check_response ? 0 : ARES_FLAG_NOCHECKRESP);
        o.ednspsz = 4096;
        const int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS | (options.edns ? ARES_OPT_EDNSPSZ : 0);
        if (ares_init_options(&channel_, &o, mask) != ARES_SUCCESS) throw std::runtime_error("ares_init_options");
        if (ares_set_servers_ports_csv(channel_, dns.address().c_str()) != ARES_SUCCESS)
            throw std::runtime_error("ares_set_servers_ports_csv");
    }
    ~Resolver() {
        ares_destroy(channel_);
        ares_library_cleanup();
    }
    Resolver(const Resolver&) = delete;
    Resolver& operator=(const Resolver&) = delete;

    // The query's outcome, after at most 5 s.
    Reply query(const std::string& name, int type) {
        Reply reply;
        ares_query(channel_, name.c_str(), ns_c_in, type, &on_reply, &reply);
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        while (!reply.done && std::chrono::steady_clock::now() < deadline) {
            fd_set readable, writable;
            FD_ZERO(&readable);
            FD_ZERO(&writable);
            const int nfds = ares_fds(channel_, &readable, &writable);
            timeval most{0, 100'000}, wait{};
            ::select(nfds, &readable, &writable, nullptr, ares_timeout(channel_, &most, &wait));
            ares_process(channel_, &readable, &writable);
        }
        if (!reply.done) ares_cancel(channel_);  // its callback must not outlive `reply`
        return reply;
    }

private:
    static void on_reply(void* arg, int status, int, unsigned char* abuf, int alen) {
        auto& reply = *static_cast<Reply*>(arg);
        reply.done = true;
        reply.status = status;
        if (abuf && alen > 0) reply.abuf.assign(abuf, abuf + alen);
    }

    ares_channel channel_ = nullptr;
};

// Each TXT record's strings joined, as SPF and DKIM read them; `chunks` counts the strings.
std::vector<std::string> txt_records(const Reply& reply, int* chunks = nullptr) {
    ares_txt_ext* txt = nullptr;
    EXPECT_EQ(ares_parse_txt_reply_ext(reply.abuf.data(), reply.len(), &txt), ARES_SUCCESS);
    std::vector<std::string> records;
    if (chunks) *chunks = 0;
    for (const auto* t = txt; t; t = t->next) {
        if (t->record_start || records.empty()) records.emplace_back();
        records.back().append(reinterpret_cast<const char*>(t->txt), t->length);
        if (chunks) ++*chunks;
    }
    ares_free_data(txt);
    return records;
}

std::vector<std::string> a_records(const Reply& reply, int* ttl = nullptr) {
    hostent* host = nullptr;
    ares_addrttl addrs[8];
    int count = 8;
    EXPECT_EQ(ares_parse_a_reply(reply.abuf.data(), reply.len(), &host, addrs, &count), ARES_SUCCESS);
    if (host) ares_free_hostent(host);
    std::vector<std::string> out;
    for (int i = 0; i < count; ++i) {
        char text[INET_ADDRSTRLEN];
        out.emplace_back(::inet_ntop(AF_INET, &addrs[i].ipaddr, text, sizeof text));
        if (ttl) *ttl = addrs[i].ttl;
    }
    return out;
}

std::string big_text(std::size_t size) {
    std::string text = "v=DKIM1; k=rsa; p=";
    for (std::size_t i = 0; text.size() < size; ++i) text += static_cast<char>('A' + i % 26);
    return text;
}

TEST(FakeDns, ShortAndLongTxtRecords) {
    FakeDns dns;
    dns.add("example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all");
    const std::string key = big_text(600);
    dns.add("sel._domainkey.example.test", "TXT", key);
    Resolver resolver(dns);

    const auto spf = resolver.query("example.test", ns_t_txt);
    ASSERT_EQ(spf.status, ARES_SUCCESS);
    EXPECT_EQ(txt_records(spf), std::vector<std::string>{"v=spf1 ip4:192.0.2.0/24 -all"});
    EXPECT_EQ(dns.tcp_queries(), 0);

    // Over 512 bytes: truncated over UDP, asked again and answered over TCP.
    const auto dkim = resolver.query("sel._domainkey.example.test", ns_t_txt);
    ASSERT_EQ(dkim.status, ARES_SUCCESS);
    int chunks = 0;
    EXPECT_EQ(txt_records(dkim, &chunks), std::vector<std::string>{key});
    EXPECT_EQ(chunks, 3);  // 255 + 255 + 90 bytes, one record
    EXPECT_EQ(dns.tcp_queries(), 1);
    EXPECT_EQ(dns.queries_for("sel._domainkey.example.test"), 2);
}

TEST(FakeDns, BigAnswersFitInUdpWhenTheQueryOffersEdns) {
    FakeDns dns;
    const std::string key = big_text(600);
    dns.add("sel._domainkey.example.test", "TXT", key);
    Resolver resolver(dns, {.edns = true});
    const auto reply = resolver.query("sel._domainkey.example.test", ns_t_txt);
    ASSERT_EQ(reply.status, ARES_SUCCESS);
    EXPECT_EQ(txt_records(reply), std::vector<std::string>{key});
    EXPECT_EQ(dns.tcp_queries(), 0);
}

TEST(FakeDns, SeveralRecordsOfANameAndTypeComeInOneAnswer) {
    FakeDns dns;
    dns.add("Example.Test.", "TXT", "first");
    dns.add("example.test", "TXT", "second");
    dns.add("example.test", "A", "192.0.2.1");
    dns.add("example.test", "A", "192.0.2.2");
    Resolver resolver(dns);
    const auto txt = resolver.query("EXAMPLE.test", ns_t_txt);  // names are case-insensitive
    ASSERT_EQ(txt.status, ARES_SUCCESS);
    EXPECT_EQ(txt_records(txt), (std::vector<std::string>{"first", "second"}));
    const auto a = resolver.query("example.test", ns_t_a);
    ASSERT_EQ(a.status, ARES_SUCCESS);
    int ttl = 0;
    EXPECT_EQ(a_records(a, &ttl), (std::vector<std::string>{"192.0.2.1", "192.0.2.2"}));
    EXPECT_EQ(ttl, 60);
    EXPECT_EQ(dns.queries_for("example.TEST"), 2);
}

TEST(FakeDns, AaaaRecords) {
    FakeDns dns;
    dns.add("v6.example.test", "AAAA", "2001:db8::25");
    Resolver resolver(dns);
    const auto reply = resolver.query("v6.example.test", ns_t_aaaa);
    ASSERT_EQ(reply.status, ARES_SUCCESS);
    hostent* host = nullptr;
    ares_addr6ttl addrs[4];
    int count = 4;
    ASSERT_EQ(ares_parse_aaaa_reply(reply.abuf.data(), reply.len(), &host, addrs, &count), ARES_SUCCESS);
    ares_free_hostent(host);
    ASSERT_EQ(count, 1);
    char text[INET6_ADDRSTRLEN];
    EXPECT_STREQ(::inet_ntop(AF_INET6, &addrs[0].ip6addr, text, sizeof text), "2001:db8::25");
}

TEST(FakeDns, MxRecords) {
    FakeDns dns;
    dns.add("example.test", "MX", "10 mail.example.test");
    dns.add("example.test", "MX", "20 backup.example.test.");
    Resolver resolver(dns);
    const auto reply = resolver.query("example.test", ns_t_mx);
    ASSERT_EQ(reply.status, ARES_SUCCESS);
    ares_mx_reply* mx = nullptr;
    ASSERT_EQ(ares_parse_mx_reply(reply.abuf.data(), reply.len(), &mx), ARES_SUCCESS);
    std::vector<std::pair<int, std::string>> got;
    for (const auto* m = mx; m; m = m->next) got.emplace_back(m->priority, m->host);
    ares_free_data(mx);
    EXPECT_EQ(got, (std::vector<std::pair<int, std::string>>{{10, "mail.example.test"}, {20, "backup.example.test"}}));
}

TEST(FakeDns, PtrRecordsFromSetPtrAndAdd) {
    FakeDns dns;
    dns.set_ptr("192.0.2.7", "old.example.test");
    dns.set_ptr("192.0.2.7", "client.example.test");  // replaces
    dns.add("8.2.0.192.in-addr.arpa", "PTR", "other.example.test");
    Resolver resolver(dns);
    for (const auto& [address, name] : {std::pair{"192.0.2.7", "client.example.test"},
                                        std::pair{"192.0.2.8", "other.example.test"}}) {
        in_addr addr{};
        ::inet_pton(AF_INET, address, &addr);
        const auto* b = reinterpret_cast<const unsigned char*>(&addr);
        const std::string qname = std::to_string(b[3]) + "." + std::to_string(b[2]) + "." + std::to_string(b[1]) +
                                  "." + std::to_string(b[0]) + ".in-addr.arpa";
        const auto reply = resolver.query(qname, ns_t_ptr);
        ASSERT_EQ(reply.status, ARES_SUCCESS) << address;
        hostent* host = nullptr;
        ASSERT_EQ(ares_parse_ptr_reply(reply.abuf.data(), reply.len(), &addr, sizeof addr, AF_INET, &host),
                  ARES_SUCCESS);
        EXPECT_STREQ(host->h_name, name);
        ares_free_hostent(host);
    }
}

TEST(FakeDns, CnamesAreFollowed) {
    FakeDns dns;
    dns.add("alias.example.test", "CNAME", "host.example.test");
    dns.add("host.example.test", "A", "192.0.2.9");
    Resolver resolver(dns);
    const auto reply = resolver.query("alias.example.test", ns_t_a);
    ASSERT_EQ(reply.status, ARES_SUCCESS);
    EXPECT_EQ(a_records(reply), std::vector<std::string>{"192.0.2.9"});
}

TEST(FakeDns, NxdomainServfailAndNodata) {
    FakeDns dns;
    dns.add("txt-only.example.test", "TXT", "hello");
    dns.add("broken.example.test", "TXT", "never seen");
    dns.set_rcode("broken.example.test", 2);
    Resolver resolver(dns, {.check_response = false});
    EXPECT_EQ(resolver.query("missing.example.test", ns_t_txt).status, ARES_ENOTFOUND);
    EXPECT_EQ(resolver.query("broken.example.test", ns_t_txt).status, ARES_ESERVFAIL);
    EXPECT_EQ(resolver.query("broken.example.test", ns_t_a).status, ARES_ESERVFAIL);
    EXPECT_EQ(resolver.query("txt-only.example.test", ns_t_a).status, ARES_ENODATA);
    EXPECT_EQ(dns.queries_for("broken.example.test"), 2);
    EXPECT_EQ(dns.queries_for("missing.example.test"), 1);
}

// Without ARES_FLAG_NOCHECKRESP, c-ares drops a SERVFAIL answer and asks again (`tries`
// times); 1.18 then reports the query's initial error, ARES_ECONNREFUSED, not ESERVFAIL.
TEST(FakeDns, ServfailWithResponseChecksIsRetriedThenFails) {
    FakeDns dns;
    dns.set_rcode("broken.example.test", 2);
    Resolver resolver(dns, {.tries = 3});
    const auto reply = resolver.query("broken.example.test", ns_t_txt);
    ASSERT_TRUE(reply.done);
    EXPECT_NE(reply.status, ARES_SUCCESS);
    EXPECT_EQ(dns.queries_for("broken.example.test"), 3);
}

TEST(FakeDns, SilentServerAnswersNothingButCountsQueries) {
    FakeDns dns;
    dns.add("example.test", "TXT", "hello");
    dns.set_silent(true);
    Resolver resolver(dns, {.timeout_ms = 200, .tries = 1});
    EXPECT_EQ(resolver.query("example.test", ns_t_txt).status, ARES_ETIMEOUT);
    EXPECT_EQ(dns.queries(), 1);
    dns.set_silent(false);
    EXPECT_EQ(resolver.query("example.test", ns_t_txt).status, ARES_SUCCESS);
    EXPECT_EQ(dns.queries(), 2);
    EXPECT_EQ(dns.address(), "127.0.0.1:" + std::to_string(dns.port()));
}

TEST(FakeDns, SilentNamesTimeOut) {
    FakeDns dns;
    dns.add("slow.example.test", "TXT", "too late");
    dns.add("fast.example.test", "TXT", "here");
    dns.set_silent_name("slow.example.test");
    Resolver resolver(dns, {.timeout_ms = 200, .tries = 1});
    EXPECT_EQ(resolver.query("slow.example.test", ns_t_txt).status, ARES_ETIMEOUT);
    EXPECT_EQ(dns.queries_for("slow.example.test"), 1);
    EXPECT_EQ(resolver.query("fast.example.test", ns_t_txt).status, ARES_SUCCESS);
}

TEST(FakeDns, ClearForgetsEverything) {
    FakeDns dns;
    dns.add("a.example.test", "A", "192.0.2.1");
    dns.set_rcode("b.example.test", 2);
    dns.set_silent_name("c.example.test");
    dns.clear();
    Resolver resolver(dns, {.timeout_ms = 500, .tries = 1});
    for (const char* name : {"a.example.test", "b.example.test", "c.example.test"})
        EXPECT_EQ(resolver.query(name, ns_t_a).status, ARES_ENOTFOUND) << name;
}

TEST(FakeDns, BadRecordsAreRefused) {
    FakeDns dns;
    EXPECT_THROW(dns.add("x.test", "A", "not an address"), std::invalid_argument);
    EXPECT_THROW(dns.add("x.test", "MX", "mail.example.test"), std::invalid_argument);
    EXPECT_THROW(dns.add("x.test", "SRV", "0 0 25 mail.example.test"), std::invalid_argument);
}

// ---- DKIM ----

struct KeyLookup {
    std::string txt;
    std::string domain, selector;  // what the signature asked for
};

DKIM_CBSTAT lookup_key(DKIM* dkim, DKIM_SIGINFO* sig, u_char* buf, size_t buflen) {
    auto* lookup = static_cast<KeyLookup*>(dkim_get_user_context(dkim));
    lookup->domain = reinterpret_cast<const char*>(dkim_sig_getdomain(sig));
    lookup->selector = reinterpret_cast<const char*>(dkim_sig_getselector(sig));
    if (lookup->txt.size() >= buflen) return DKIM_CBSTAT_ERROR;
    std::memcpy(buf, lookup->txt.c_str(), lookup->txt.size() + 1);
    return DKIM_CBSTAT_CONTINUE;
}

struct Verdict {
    DKIM_STAT eom = DKIM_STAT_INTERNAL;
    bool passed = false;
    int body_hash = DKIM_SIGBH_UNTESTED;
};

Verdict verify(const std::string& message, KeyLookup& lookup) {
    using namespace testsupport::dkim_detail;
    DkimLibPtr lib(dkim_init(nullptr, nullptr));
    if (!lib) throw std::runtime_error("dkim_init");
    dkim_set_key_lookup(lib.get(), &lookup_key);
    DKIM_STAT status = DKIM_STAT_OK;
    DkimPtr dkim(dkim_verify(lib.get(), reinterpret_cast<const unsigned char*>("support_test"), nullptr, &status));
    if (!dkim) throw std::runtime_error("dkim_verify");
    dkim_set_user_context(dkim.get(), &lookup);
    std::string copy = message;
    dkim_chunk(dkim.get(), reinterpret_cast<unsigned char*>(copy.data()), copy.size());
    dkim_chunk(dkim.get(), nullptr, 0);
    Verdict verdict;
    verdict.eom = dkim_eom(dkim.get(), nullptr);
    if (DKIM_SIGINFO* sig = dkim_getsignature(dkim.get())) {
        verdict.passed = (dkim_sig_getflags(sig) & DKIM_SIGFLAG_PASSED) != 0;
        verdict.body_hash = dkim_sig_getbh(sig);
    }
    return verdict;
}

const std::string kMessage =
    "From: Alice <alice@example.test>\n"
    "To: bob@mxhook.test\n"
    "Subject: signed\n"
    "Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
    "Message-ID: <1@example.test>\n"
    "\n"
    "Hello,\n"
    "this body is signed.\n";

TEST(DkimSigner, KeysLookLikeDnsRecords) {
    const auto key = testsupport::generate_dkim_key(1024);
    EXPECT_EQ(key.public_txt.rfind("v=DKIM1; k=rsa; p=MI", 0), 0u);  // "MI": base64 of a DER SEQUENCE
    EXPECT_EQ(key.private_pem.rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
}

TEST(DkimSigner, SignaturesVerifyWithLibopendkim) {
    const auto key = testsupport::generate_dkim_key();
    const std::string signed_message = testsupport::dkim_sign(kMessage, key, "example.test", "sel");
    ASSERT_EQ(signed_message.rfind("DKIM-Signature: ", 0), 0u);
    for (std::size_t lf = signed_message.find('\n'); lf != std::string::npos; lf = signed_message.find('\n', lf + 1))
        ASSERT_EQ(signed_message[lf - 1], '\r') << "bare LF at " << lf;
    EXPECT_NE(signed_message.find("d=example.test"), std::string::npos);
    EXPECT_NE(signed_message.find("s=sel"), std::string::npos);
    EXPECT_NE(signed_message.find("a=rsa-sha256"), std::string::npos);
    EXPECT_NE(signed_message.find("c=relaxed/relaxed"), std::string::npos);

    KeyLookup lookup{key.public_txt, {}, {}};
    const auto verdict = verify(signed_message, lookup);
    EXPECT_EQ(verdict.eom, DKIM_STAT_OK);
    EXPECT_TRUE(verdict.passed);
    EXPECT_EQ(verdict.body_hash, DKIM_SIGBH_MATCH);
    EXPECT_EQ(lookup.domain, "example.test");
    EXPECT_EQ(lookup.selector, "sel");
}

TEST(DkimSigner, AChangedBodyFailsVerification) {
    const auto key = testsupport::generate_dkim_key();
    std::string message = testsupport::dkim_sign(kMessage, key, "example.test", "sel");
    message.replace(message.find("is signed"), 9, "is forged");
    KeyLookup lookup{key.public_txt, {}, {}};
    const auto verdict = verify(message, lookup);
    EXPECT_NE(verdict.eom, DKIM_STAT_OK);
    // The header hash (bh= included) still verifies, so PASSED is set; the body hash is
    // what no longer matches (DKIM_SIG_CHECK wants both).
    EXPECT_EQ(verdict.body_hash, DKIM_SIGBH_MISMATCH);
}

TEST(DkimSigner, AnotherKeyFailsVerification) {
    const auto key = testsupport::generate_dkim_key(1024);
    const auto other = testsupport::generate_dkim_key(1024);
    KeyLookup lookup{other.public_txt, {}, {}};
    const auto verdict = verify(testsupport::dkim_sign(kMessage, key, "example.test", "sel"), lookup);
    EXPECT_NE(verdict.eom, DKIM_STAT_OK);
    EXPECT_FALSE(verdict.passed);  // libopendkim then leaves the body hash untested
}

}  // namespace
