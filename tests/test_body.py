"""
Tests for L{twisted_rp.http.body}: the streaming body decoders and the chunk encoder.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.http.body import LAST_CHUNK, ChunkedDecoder, LengthDecoder, encode_chunk
from twisted_rp.http.message import HTTPError

Decoder = ChunkedDecoder | LengthDecoder


def feed_all(decoder: Decoder, pieces: list[bytes]) -> tuple[bytes, bytes | None]:
    """
    Feed C{pieces} in order, as a transport would deliver them, stopping at the end of the body.

    @return: the payload and the bytes that followed the body (C{None} if it did not end),
        those of the piece that ended it and every later piece.
    """
    payload = []
    for index, piece in enumerate(pieces):
        decoded, leftover = decoder.feed(piece)
        payload.extend(decoded)
        if leftover is not None:
            return b"".join(payload), leftover + b"".join(pieces[index + 1 :])
    return b"".join(payload), None


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


BODY = (
    b"5\r\nhello\r\n"
    b"1;name=value;flag\r\n \r\n"
    b'A ; quoted = "a \\" b"\r\n0123456789\r\n'
    b"0\r\n"
    b"Expires: never\r\n"
    b"X-Checksum:\t abc \r\n"
    b"\r\n"
)
PAYLOAD = b"hello 0123456789"
TRAILERS = [(b"Expires", b"never"), (b"X-Checksum", b"abc")]
NEXT_REQUEST = b"GET /next HTTP/1.1\r\n"


class ChunkedDecoderTests(SynchronousTestCase):
    def assertDecodes(self, pieces: list[bytes]) -> None:
        decoder = ChunkedDecoder()
        self.assertEqual(feed_all(decoder, pieces), (PAYLOAD, NEXT_REQUEST))
        self.assertEqual(decoder.trailers, TRAILERS)
        self.assertTrue(decoder.done)

    def assertRejected(self, data: bytes, **limits: int) -> HTTPError:
        """Check C{data} is refused whether it arrives at once or byte by byte."""
        error = self.assertRaises(HTTPError, feed_all, ChunkedDecoder(**limits), [data])
        self.assertEqual(error.status, 400)
        error = self.assertRaises(HTTPError, feed_all, ChunkedDecoder(**limits), byte_by_byte(data))
        self.assertEqual(error.status, 400)
        return error

    def test_whole(self) -> None:
        self.assertDecodes([BODY + NEXT_REQUEST])

    def test_byte_by_byte(self) -> None:
        self.assertDecodes(byte_by_byte(BODY + NEXT_REQUEST))

    def test_every_split_point(self) -> None:
        data = BODY + NEXT_REQUEST
        for cut in range(1, len(data)):
            with self.subTest(cut=cut):
                self.assertDecodes([data[:cut], data[cut:]])

    def test_random_splits(self) -> None:
        rng = random.Random(9112)
        data = BODY + NEXT_REQUEST
        for _ in range(300):
            self.assertDecodes(random_splits(data, rng))

    def test_large_random_body(self) -> None:
        rng = random.Random(7230)
        payload = rng.randbytes(200_000)
        encoded = b"".join(map(encode_chunk, random_splits(payload, rng)))
        decoder = ChunkedDecoder()
        self.assertEqual(
            feed_all(decoder, random_splits(encoded + LAST_CHUNK, rng)), (payload, b"")
        )
        self.assertEqual(decoder.trailers, [])

    def test_pieces_are_slices_of_the_input(self) -> None:
        decoder = ChunkedDecoder()
        decoder.feed(b"10\r\n")
        data = b"0123456789abcdef"
        pieces, leftover = decoder.feed(data)
        self.assertIs(pieces[0], data)
        self.assertIsNone(leftover)

    def test_no_empty_pieces(self) -> None:
        decoder = ChunkedDecoder()
        self.assertEqual(decoder.feed(b"5\r\n"), ([], None))
        self.assertEqual(decoder.feed(b"ab"), ([b"ab"], None))

    def test_empty_body_without_trailers(self) -> None:
        decoder = ChunkedDecoder()
        self.assertEqual(decoder.feed(LAST_CHUNK), ([], b""))
        self.assertEqual(decoder.trailers, [])

    def test_pipelined_body_leftover(self) -> None:
        decoder = ChunkedDecoder()
        self.assertEqual(decoder.feed(b"3\r\nabc\r\n0\r\n\r\n3\r\nxyz"), ([b"abc"], b"3\r\nxyz"))

    def test_feed_after_end_returns_everything_as_leftover(self) -> None:
        decoder = ChunkedDecoder()
        decoder.feed(LAST_CHUNK)
        self.assertEqual(decoder.feed(b"more"), ([], b"more"))

    def test_incomplete_body_has_no_leftover(self) -> None:
        self.assertEqual(feed_all(ChunkedDecoder(), [b"5\r\nhello\r\n0\r\n"]), (b"hello", None))

    def test_uppercase_and_zero_padded_sizes(self) -> None:
        data = b"00A\r\n0123456789\r\n000\r\n\r\n"
        self.assertEqual(feed_all(ChunkedDecoder(), [data]), (b"0123456789", b""))

    def test_sixteen_hex_digits_accepted(self) -> None:
        decoder = ChunkedDecoder()
        self.assertEqual(decoder.feed(b"0000000000000003\r\nabc"), ([b"abc"], None))

    def test_seventeen_hex_digits_rejected(self) -> None:
        self.assertRejected(b"00000000000000003\r\nabc\r\n0\r\n\r\n")

    def test_empty_chunk_size_rejected(self) -> None:
        self.assertRejected(b"\r\nabc\r\n0\r\n\r\n")

    def test_non_hex_chunk_size_rejected(self) -> None:
        self.assertRejected(b"g\r\n")

    def test_signed_chunk_size_rejected(self) -> None:
        self.assertRejected(b"+5\r\nhello\r\n0\r\n\r\n")

    def test_hex_prefix_chunk_size_rejected(self) -> None:
        self.assertRejected(b"0x5\r\nhello\r\n0\r\n\r\n")

    def test_space_after_chunk_size_rejected(self) -> None:
        self.assertRejected(b"5 \r\nhello\r\n0\r\n\r\n")

    def test_bare_lf_after_chunk_size_rejected(self) -> None:
        error = self.assertRejected(b"5\nhello\r\n0\r\n\r\n")
        self.assertIn("LF", error.detail)

    def test_bare_cr_in_size_line_rejected(self) -> None:
        self.assertRejected(b"5\r;a\r\nhello\r\n0\r\n\r\n")

    def test_missing_crlf_after_data_rejected(self) -> None:
        error = self.assertRejected(b"5\r\nhelloX\r\n0\r\n\r\n")
        self.assertIn("CRLF", error.detail)

    def test_bare_lf_after_data_rejected(self) -> None:
        self.assertRejected(b"5\r\nhello\n0\r\n\r\n")

    def test_cr_without_lf_after_data_rejected(self) -> None:
        self.assertRejected(b"5\r\nhello\r0\r\n\r\n")

    def test_chunk_longer_than_its_size_rejected(self) -> None:
        self.assertRejected(b"3\r\nhello\r\n0\r\n\r\n")

    def test_invalid_extension_syntax_rejected(self) -> None:
        for ext in (b";", b";=v", b"; a=", b";a=b c", b';a="unterminated', b";a\x00"):
            with self.subTest(ext=ext):
                self.assertRejected(b"1" + ext + b"\r\nx\r\n0\r\n\r\n")

    def test_extension_at_limit_accepted(self) -> None:
        ext = b";" + b"e" * 9
        decoder = ChunkedDecoder(max_chunk_ext=len(ext))
        self.assertEqual(feed_all(decoder, [b"1" + ext + b"\r\nx\r\n0\r\n\r\n"]), (b"x", b""))

    def test_overlong_extension_rejected(self) -> None:
        ext = b";" + b"e" * 10
        error = self.assertRejected(b"1" + ext + b"\r\nx\r\n0\r\n\r\n", max_chunk_ext=len(ext) - 1)
        self.assertIn("extension", error.detail)

    def test_endless_size_line_rejected_without_its_end(self) -> None:
        decoder = ChunkedDecoder(max_chunk_ext=100)
        error = self.assertRaises(HTTPError, decoder.feed, b"1;" + b"e" * 200)
        self.assertEqual(error.status, 400)

    def test_trailers_at_limit_accepted(self) -> None:
        trailer = b"X-A: " + b"v" * 20 + b"\r\n\r\n"
        decoder = ChunkedDecoder(max_trailer_bytes=len(trailer))
        self.assertEqual(feed_all(decoder, [b"0\r\n" + trailer]), (b"", b""))
        self.assertEqual(decoder.trailers, [(b"X-A", b"v" * 20)])

    def test_overlong_trailers_rejected(self) -> None:
        trailer = b"X-A: " + b"v" * 20 + b"\r\n\r\n"
        error = self.assertRejected(b"0\r\n" + trailer, max_trailer_bytes=len(trailer) - 1)
        self.assertIn("trailer", error.detail)

    def test_many_trailers_over_limit_rejected(self) -> None:
        self.assertRejected(b"0\r\n" + b"X-A: b\r\n" * 10 + b"\r\n", max_trailer_bytes=50)

    def test_obs_fold_in_trailer_rejected(self) -> None:
        self.assertRejected(b"0\r\nX-A: b\r\n c\r\n\r\n")

    def test_trailer_without_colon_rejected(self) -> None:
        self.assertRejected(b"0\r\nnot a field\r\n\r\n")

    def test_space_before_colon_in_trailer_rejected(self) -> None:
        self.assertRejected(b"0\r\nX-A : b\r\n\r\n")

    def test_control_character_in_trailer_rejected(self) -> None:
        self.assertRejected(b"0\r\nX-A: b\x00\r\n\r\n")

    def test_bare_lf_in_trailers_rejected(self) -> None:
        self.assertRejected(b"0\r\nX-A: b\n\r\n")

    def test_bare_lf_ending_trailers_rejected(self) -> None:
        self.assertRejected(b"0\r\nX-A: b\r\n\n")


class LengthDecoderTests(SynchronousTestCase):
    def test_exact(self) -> None:
        decoder = LengthDecoder(5)
        self.assertEqual(decoder.feed(b"hello"), ([b"hello"], b""))
        self.assertEqual((decoder.remaining, decoder.done), (0, True))

    def test_split(self) -> None:
        decoder = LengthDecoder(5)
        self.assertEqual(decoder.feed(b"he"), ([b"he"], None))
        self.assertEqual(decoder.remaining, 3)
        self.assertFalse(decoder.done)
        self.assertEqual(decoder.feed(b"llo"), ([b"llo"], b""))

    def test_byte_by_byte_with_pipelined_leftover(self) -> None:
        decoder = LengthDecoder(5)
        self.assertEqual(feed_all(decoder, byte_by_byte(b"helloGET")), (b"hello", b"GET"))

    def test_leftover(self) -> None:
        self.assertEqual(LengthDecoder(3).feed(b"abcdef"), ([b"abc"], b"def"))

    def test_empty_feed(self) -> None:
        self.assertEqual(LengthDecoder(3).feed(b""), ([], None))

    def test_whole_input_is_not_copied(self) -> None:
        data = b"x" * 1000
        pieces, _ = LengthDecoder(5000).feed(data)
        self.assertIs(pieces[0], data)

    def test_zero_length_is_done_at_once(self) -> None:
        decoder = LengthDecoder(0)
        self.assertTrue(decoder.done)
        self.assertEqual(decoder.feed(b"next"), ([], b"next"))

    def test_negative_length_refused(self) -> None:
        self.assertRaises(ValueError, LengthDecoder, -1)


class EncodeChunkTests(SynchronousTestCase):
    def test_encode(self) -> None:
        self.assertEqual(encode_chunk(b"hello world!"), b"c\r\nhello world!\r\n")

    def test_empty_data_gives_nothing(self) -> None:
        self.assertEqual(encode_chunk(b""), b"")

    def test_last_chunk(self) -> None:
        self.assertEqual(LAST_CHUNK, b"0\r\n\r\n")

    def test_round_trip(self) -> None:
        rng = random.Random(1)
        payloads = [rng.randbytes(rng.randint(0, 300)) for _ in range(20)]
        encoded = b"".join(map(encode_chunk, payloads)) + LAST_CHUNK
        self.assertEqual(
            feed_all(ChunkedDecoder(), random_splits(encoded, rng)), (b"".join(payloads), b"")
        )
