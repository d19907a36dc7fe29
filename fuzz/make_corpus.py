#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/corpus/ (run it again after changing it; the files are
committed). Each smtp seed is two control bytes and then what a client sends; see
fuzz/README.md for the layout. Hand-made reproducers live next to these files and are
not touched by this script."""
import pathlib

here = pathlib.Path(__file__).resolve().parent

# smtp control byte 0: low 2 bits pick how DATA is cut into reads.
WHOLE, ONE_BYTE, SMALL, LARGE = b"@", b"A", b"B", b"C"  # 0x40..0x43: modes 0..3

EHLO = b"EHLO client.example.org\r\n"
ENVELOPE = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
MESSAGE = b"From: Alice <alice@example.org>\r\nSubject: Hello\r\n\r\nHi Bob.\r\n"
SECOND = (b"MAIL FROM:<mallory@example.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
          b"From: Mallory <mallory@example.org>\r\nSubject: smuggled\r\n\r\nnot yours\r\n")


def smtp(name, control, data):
    (here / "corpus" / "smtp" / name).write_bytes(control + data)


def headers(name, data):
    (here / "corpus" / "headers" / name).write_bytes(data)


smtp("session", WHOLE + b"a", EHLO + ENVELOPE + MESSAGE + b".\r\nQUIT\r\n")
smtp("session-lf-helo", ONE_BYTE + b"b",
     b"HELO client\nMAIL FROM:<>\nRCPT TO:<postmaster>\nDATA\nbody\r\n.\r\nRSET\nNOOP\nVRFY x\nHELP\nQUIT\n")
smtp("pipelined", SMALL + b"c",
     EHLO + b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n"
     b"RCPT TO:<b@example.com>\r\nRCPT TO:<c@EXAMPLE.COM>\r\nRCPT TO:<d@other.example>\r\n"
     b"RCPT TO:<e@example.com>\r\nRCPT TO:<f@example.com>\r\nRCPT TO:<g@example.com>\r\n"
     b"RCPT TO:<h@example.com>\r\nDATA\r\n" + MESSAGE + b".\r\nMAIL FROM:<x@example.org>\r\n"
     b"RCPT TO:<y@example.com>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n")
smtp("starttls", WHOLE + b"d",
     EHLO + b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n" + EHLO + b"STARTTLS\r\n"
     + ENVELOPE + MESSAGE + b".\r\nQUIT\r\n")
smtp("dot-stuffing", ONE_BYTE + b"e",
     EHLO + ENVELOPE + b"Subject: dots\r\n\r\n..\r\n.leading\r\n...\r\n. \r\n.\rx\r\n.\r\n")
smtp("errors", LARGE + b"f",
     b"MAIL FROM:<a@example.org>\r\nEHLO\r\nEHLO a b\r\nAUTH PLAIN x\r\nBDAT 10\r\n"
     b"MAIL FROM:a@example.org\r\nEHLO x\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
     b"MAIL FROM:<a@example.org> SIZE=99999999\r\nMAIL FROM:<a@example.org> FOO=1\r\n"
     b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com> NOTIFY=NEVER\r\nRCPT TO:<@r:b@example.com>\r\n"
     b"DATA x\r\n\r\nRSET x\r\nQUIT\r\n")
smtp("long-lines", SMALL + b"g",
     EHLO + b"NOOP " + b"x" * 520 + b"\r\n" + b"x" * 600 + b"\nNOOP\r\n" + ENVELOPE
     + b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\nQUIT\r\n")
smtp("too-big", LARGE + b"h", EHLO + ENVELOPE + b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 60 + b".\r\nQUIT\r\n")
smtp("binary", WHOLE + b"i",
     EHLO + b"\x00\xff\xfe\r\n\x80MAIL\x00 FROM:<\xc3\xa9@example.org>\r\n"
     + ENVELOPE + b"\x00\x01\x02\r\r\n\xff\r\n.\r\nQUIT\r\n")
smtp("bare-lf-body", ONE_BYTE + b"j", EHLO + ENVELOPE + b"Subject: lf\n\nline\nline\r\n.\r\nQUIT\r\n")
# Junk commands up to and past the limit (8 in the fuzz settings), forgiven by a message.
smtp("junk", SMALL + b"x",
     EHLO + b"NOOP\r\nRSET\r\nVRFY a\r\nHELP\r\n" * 2 + ENVELOPE + MESSAGE + b".\r\n"
     + b"NOOP\r\n" * 9 + b"QUIT\r\n")
# Quoted local parts: printable quoted pairs pass, an escaped NUL, CR or ESC is refused.
smtp("quoted-pairs", WHOLE + b"y",
     EHLO + b"MAIL FROM:<\"a\\\"b\"@example.org>\r\nRCPT TO:<\"c\\\x00d\"@example.com>\r\n"
     b"RCPT TO:<\"c\\\rd\"@example.com>\r\nRCPT TO:<\"c\\\x1bd\"@example.com>\r\n"
     b"RCPT TO:<\"c\\ d\"@example.com>\r\nDATA\r\n" + MESSAGE + b".\r\nQUIT\r\n")

# PROXY protocol headers a balancer sends before SMTP (checked by check_proxy_header).
PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
smtp("proxy-v1-then-smtp", WHOLE + b"a",
     b"PROXY TCP4 192.0.2.7 198.51.100.1 54321 25\r\n" + EHLO + ENVELOPE + MESSAGE + b".\r\nQUIT\r\n")
smtp("proxy-v1-unknown", WHOLE + b"b", b"PROXY UNKNOWN\r\n" + EHLO)
smtp("proxy-v2-tcp4-tlv", WHOLE + b"c",
     PROXY_V2 + b"\x21\x11\x00\x12\xc0\x00\x02\x07\xc6\x33\x64\x01\xd4\x31\x00\x19\x04\x00\x03abc" + EHLO)
smtp("proxy-v2-local", WHOLE + b"d", PROXY_V2 + b"\x20\x00\x00\x00" + EHLO)


# SMTP smuggling: none of these ends the first message; only the final <CR><LF>.<CR><LF> does.
variants = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr": b"\r\n.\r",
    "crcrlf-dot-crcrlf": b"\r\r\n.\r\r\n",
    "lf-dot-crcrlf": b"\n.\r\r\n",
}
for i, (name, end) in enumerate(variants.items()):
    control = (WHOLE, ONE_BYTE, SMALL)[i % 3] + bytes([ord("k") + i])
    smtp("smuggle-" + name, control,
         EHLO + ENVELOPE + MESSAGE + b"first" + end + SECOND + b".\r\nQUIT\r\n")

headers("simple", MESSAGE + b"body\r\n")
headers("folded", b"Received: from a\r\n\tby b; Wed, 25 Nov 2026 17:03:14 +0000\r\n"
        b"Subject: a\r\n b\r\n\t c\r\n \r\nX-Empty:\r\n  \r\n:\r\nno colon\r\n\r\nbody\r\n")
headers("lf-only", b"From: a\nSubject: b\n\nbody\n")
headers("no-end", b"X-A: 1\r\nX-B: 2\r\r\nX-C: \x00\xff\r\n")
headers("received", b"Received: a\r\nreceived:b\r\nRECEIVED : c\r\n Received: d\r\nX-Received: e\r\n\r\nReceived: f\r\n")


def meta(name, data):
    (here / "corpus" / "meta").mkdir(exist_ok=True)
    (here / "corpus" / "meta" / name).write_bytes(data)


meta("fresh", b'{\n  "id": "1764090194123-0f8e6a3c",\n  "createdAt": "2025-11-25T17:03:14.123Z",\n'
     b'  "attempts": 0,\n  "nextAttemptAt": null,\n  "sender": "alice@example.org",\n'
     b'  "recipients": [\n    "bob@example.com"\n  ],\n  "from": "Alice <alice@example.org>",\n'
     b'  "subject": "Caf\xc3\xa9 \\"menu\\"",\n  "headers": [\n    [\n      "Subject",\n      "x\\ty"\n    ]\n  ],\n'
     b'  "remote": {\n    "ip": "192.0.2.10",\n    "host": "",\n    "helo": "mail.example.org"\n  }\n}\n')
meta("retried", b'{"id":"a","createdAt":"2024-11-25T17:03:14Z","attempts":3,"nextAttemptAt":"2024-11-25T18:03:14.000Z",'
     b'"sender":"<a@b>","recipients":["<c@d>","e@f"],"headers":[],"remote":{"ip":"::1"},'
     b'"lastAttemptAt":"2024-11-25T17:33:14.000Z","lastError":"webhook returned 503","interruptedAttempts":1}')
meta("odd", b'{"future":{"a":[1,{"b":null}]},"id":"x","id":"y","createdAt":"2024-02-29T00:00:00Z",'
     b'"recipients":[],"remote":null,"headers":null,"subject":null,"attempts":18446744073709551615,"f":1.5e3}')
