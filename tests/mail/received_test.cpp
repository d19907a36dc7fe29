#include "mxhook/mail/received.hpp"

#include <gtest/gtest.h>

#include <clocale>
#include <string>

namespace mxhook::mail {
namespace {

using namespace std::chrono;

// 2026-11-25T17:03:14Z, a Wednesday.
const system_clock::time_point when = sys_days{year{2026} / November / 25} + 17h + 3min + 14s;

bool begins_with(const std::string& text, const std::string& prefix) { return text.starts_with(prefix); }

TraceInfo sample() {
    TraceInfo info;
    info.helo = "client.example.org";
    info.client_host = "mail.example.org";
    info.client_ip = "192.0.2.7";
    info.by_host = "mx.example.com";
    info.protocol = "ESMTP";
    info.id = "abc123";
    info.recipient = "user@example.com";
    info.when = when;
    return info;
}

TEST(ReceivedDateTest, Rfc5322Format) {
    EXPECT_EQ(rfc5322_date(when), "Wed, 25 Nov 2026 17:03:14 +0000");
}

TEST(ReceivedDateTest, DropsSubSecondsAndHandlesEpochAndLeapDay) {
    EXPECT_EQ(rfc5322_date(when + 999ms), "Wed, 25 Nov 2026 17:03:14 +0000");
    EXPECT_EQ(rfc5322_date(system_clock::time_point{}), "Thu, 1 Jan 1970 00:00:00 +0000");
    EXPECT_EQ(rfc5322_date(sys_days{year{2024} / February / 29} + 23h + 59min + 59s),
              "Thu, 29 Feb 2024 23:59:59 +0000");
}

TEST(ReceivedDateTest, EveryWeekdayAndMonthName) {
    const char* weekdays[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};  // 2024-01-01 was a Monday
    for (int i = 0; i < 7; ++i)
        EXPECT_EQ(rfc5322_date(sys_days{year{2024} / January / 1} + days{i}).substr(0, 3), weekdays[i]);
    const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    for (unsigned m = 1; m <= 12; ++m) {
        auto text = rfc5322_date(sys_days{year{2025} / month{m} / 10});
        EXPECT_EQ(text.substr(8, 3), months[m - 1]) << text;
    }
}

TEST(ReceivedDateTest, IgnoresTheProcessLocale) {
    // If a French locale is installed, strftime would write "mer." and "nov.".
    const char* old = std::setlocale(LC_TIME, nullptr);
    std::string saved = old ? old : "C";
    std::setlocale(LC_TIME, "fr_FR.UTF-8");
    auto text = rfc5322_date(when);
    std::setlocale(LC_TIME, saved.c_str());
    EXPECT_EQ(text, "Wed, 25 Nov 2026 17:03:14 +0000");
}

TEST(ReceivedHeaderTest, FullHeader) {
    EXPECT_EQ(received_header(sample()),
              "Received: from client.example.org (mail.example.org [192.0.2.7])\r\n"
              "\tby mx.example.com (mxhook) with ESMTP id abc123\r\n"
              "\tfor <user@example.com>; Wed, 25 Nov 2026 17:03:14 +0000\r\n");
}

TEST(ReceivedHeaderTest, WithoutReverseDnsName) {
    auto info = sample();
    info.client_host.clear();
    EXPECT_PRED2(begins_with, received_header(info), "Received: from client.example.org ([192.0.2.7])");
}

TEST(ReceivedHeaderTest, Ipv6AddressLiteral) {
    auto info = sample();
    info.client_ip = "2001:db8::1";
    info.client_host.clear();
    EXPECT_PRED2(begins_with, received_header(info), "Received: from client.example.org ([IPv6:2001:db8::1])\r\n\tby");
}

TEST(ReceivedHeaderTest, WithoutRecipient) {
    auto info = sample();
    info.recipient.clear();
    info.protocol = "SMTP";
    EXPECT_EQ(received_header(info),
              "Received: from client.example.org (mail.example.org [192.0.2.7])\r\n"
              "\tby mx.example.com (mxhook) with SMTP id abc123; Wed, 25 Nov 2026 17:03:14 +0000\r\n");
}

TEST(ReceivedHeaderTest, EmptyHeloIsUnknown) {
    auto info = sample();
    info.helo.clear();
    EXPECT_PRED2(begins_with, received_header(info), "Received: from unknown ");
}

TEST(ReceivedHeaderTest, HeloCannotInjectLines) {
    auto info = sample();
    info.helo = "evil\r\nX-Injected: yes\r\n\x01\x7f";
    auto header = received_header(info);
    EXPECT_PRED2(begins_with, header, "Received: from evilX-Injected: yes (");
    // Exactly three lines, each ending in CRLF, and no bare CR or LF anywhere.
    std::size_t crlf = 0;
    for (std::size_t i = 0; i < header.size(); ++i) {
        if (header[i] == '\n') {
            ASSERT_GT(i, 0u);
            EXPECT_EQ(header[i - 1], '\r');
            ++crlf;
        } else if (header[i] == '\r') {
            ASSERT_LT(i + 1, header.size());
            EXPECT_EQ(header[i + 1], '\n');
        }
    }
    EXPECT_EQ(crlf, 3u);
    EXPECT_EQ(header.find('\x01'), std::string::npos);
    EXPECT_EQ(header.find('\x7f'), std::string::npos);
}

TEST(ReceivedHeaderTest, HeloOfOnlyControlCharactersIsUnknown) {
    auto info = sample();
    info.helo = "\r\n";
    EXPECT_PRED2(begins_with, received_header(info), "Received: from unknown ");
}

}  // namespace
}  // namespace mxhook::mail
