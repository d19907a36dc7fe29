#!/usr/bin/env python3
"""Reference MIME extractor for tests/integration/parsed_payload_test.cpp (stdlib only).

Usage: mime_reference.py FILE.eml [FILE.eml ...]
Prints one JSON object mapping each path given to what WEBHOOK_FORMAT=parsed/json must
make of it (README, "The webhook payload"):

  {"leaves": [...], "body_plain": {...} | null, "body_html": {...} | null}

leaves: every leaf of a depth-first walk (multipart containers descended, message/rfc822
not: it is a leaf), each {"content_type", "filename", "content_id", "is_attachment",
"role", "sha256", "length", "charset"}; role is "body-plain" (first text/plain that is not
an attachment), "body-html" (first such text/html) or "attachment". sha256/length are of
the content-transfer-decoded bytes (null for message/rfc822). body_plain/body_html: the
chosen part's text decoded with its declared charset (errors='replace'), and
"comparable": true when that charset is none, us-ascii, utf-8 or iso-8859-1 and the bytes
decode without error (none/us-ascii/utf-8 as UTF-8), i.e. when the test may compare it.
"""

import codecs
import email
import email.header
import email.utils
import hashlib
import json
import sys
from email.policy import Compat32


class RawHeaders(Compat32):
    """compat32, except that a header holding raw 8-bit bytes is returned as it is
    (surrogate-escaped) instead of as a Header whose str() turns each byte into U+FFFD,
    so that clean() can read those bytes as UTF-8."""

    def header_fetch_parse(self, name, value):
        return value


def clean(text):
    """A str safe for JSON: raw 8-bit header bytes (surrogate-escaped) read as UTF-8."""
    if text is None:
        return None
    text = str(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def filename_of(part):
    name = part.get_filename()  # Content-Disposition filename, else Content-Type name; RFC 2231 collapsed
    if name is None:
        return None
    name = clean(name)
    if "=?" in name:  # RFC 2047 encoded words (not allowed in parameters, common anyway)
        try:
            name = str(email.header.make_header(email.header.decode_header(name)))
        except Exception:
            pass
    return clean(name)


def is_attachment(part):
    disposition = (part.get_content_disposition() or "").lower()
    return disposition == "attachment" or part.get_filename() is not None


def leaves(part):
    if part.get_content_maintype() == "multipart":
        # A multipart whose boundary never occurs has no parts (Python keeps its text as
        # a payload; a MIME parser sees only a preamble): no leaves.
        if part.is_multipart():
            for child in part.get_payload():
                yield from leaves(child)
    else:
        yield part


ASCII, UTF8, LATIN1 = (codecs.lookup(name).name for name in ("us-ascii", "utf-8", "iso-8859-1"))


def canonical_charset(part):
    charset = part.get_content_charset()  # lower case, or None
    if not charset:
        return None
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return charset


def text_of(part, data):
    charset = canonical_charset(part)
    if charset in (None, ASCII, UTF8):
        try:
            return data.decode("utf-8"), True
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace"), False
    if charset == LATIN1:
        return data.decode("latin-1"), True
    try:
        return data.decode(charset, "replace"), False
    except LookupError:
        return data.decode("utf-8", "replace"), False


def describe(path):
    with open(path, "rb") as f:
        # message_from_bytes, not message_from_binary_file: the latter reads through a
        # TextIOWrapper whose universal newlines turn every CRLF into LF.
        message = email.message_from_bytes(f.read(), policy=RawHeaders())
    out = {"leaves": [], "body_plain": None, "body_html": None}
    single = not message.is_multipart() and message.get_content_type() == "text/plain"
    for part in leaves(message):
        ctype = part.get_content_type()
        rfc822 = ctype == "message/rfc822" or part.is_multipart()
        data = None if rfc822 else (part.get_payload(decode=True) or b"")
        attachment = is_attachment(part)
        role = "attachment"
        for kind, key in (("text/plain", "body_plain"), ("text/html", "body_html")):
            if ctype == kind and (not attachment or single) and out[key] is None:
                text, comparable = text_of(part, data)
                out[key] = {"text": text, "comparable": comparable, "charset": canonical_charset(part)}
                role = key.replace("_", "-")
        cid = part.get("Content-ID")
        out["leaves"].append({
            "content_type": ctype,
            "filename": filename_of(part),
            "content_id": clean(cid).strip() if cid is not None else None,
            "is_attachment": attachment,
            "role": role,
            "sha256": None if data is None else hashlib.sha256(data).hexdigest(),
            "length": None if data is None else len(data),
            "charset": clean(part.get_content_charset()),
        })
    return out


def main(paths):
    result = {}
    for path in paths:
        try:
            result[path] = describe(path)
        except Exception as e:  # reported per file; the test decides
            result[path] = {"error": "%s: %s" % (type(e).__name__, e)}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
