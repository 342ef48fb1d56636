"""One uploaded file, streamed from a ``multipart/form-data`` request body straight into the service's work folder.

The body is parsed as it arrives (``python-multipart``'s streaming parser), so an upload is never held whole in
memory nor spooled to the system's temporary folder, and one over the size limit is refused as soon as its bytes
pass the limit. The file's kind is told from its first bytes (never from its name, which is not kept): a DICOM
(``DICM`` at byte 128), PNG, JPEG or NIfTI-1/2 (plain or gzip-compressed) head X-ray.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

FIELD = "file"  # the multipart field that carries the X-ray
KINDS = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg", "nifti": ".nii", "nifti-gz": ".nii.gz"}
ACCEPTED = "a DICOM, PNG, JPEG or NIfTI head X-ray"
SNIFF_BYTES = 544  # enough for the DICOM preamble (132) and a NIfTI-2 header's sizeof_hdr (4)
MAX_PART_HEADERS = 16 * 1024  # bytes of one part's headers (names and values together)
SLACK = 64_000  # bytes beyond the file's limit allowed for the other parts and every part's headers


class UploadError(Exception):
    """An upload refused: the HTTP status and a one-line message for the person who sent it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def megabytes(n: int) -> str:
    """``n`` bytes as a short text in MB (1 MB = 10^6 bytes)."""
    return f"{n / 1e6:.3g} MB"


def _nifti_header(head: bytes) -> bool:
    """NIfTI-1 (``sizeof_hdr`` 348, magic ``n+1``/``ni1`` at 344) or NIfTI-2 (540, ``n+2``/``ni2`` at 4), any endian."""
    size = head[:4]
    if size in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return head[344:347] in (b"n+1", b"ni1")
    if size in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return head[4:7] in (b"n+2", b"ni2")
    return False


def sniff_kind(head: bytes) -> str | None:
    """The file kind (a key of ``KINDS``) from its first ``SNIFF_BYTES`` bytes, or None for anything else."""
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if _nifti_header(head):
        return "nifti"
    if head.startswith(b"\x1f\x8b"):  # gzip: taken for a .nii.gz here, checked once whole (sniff_gzip_file)
        return "nifti-gz"
    return None


def sniff_gzip_file(path: Path) -> str | None:
    """``"nifti-gz"`` if a gzip file unpacks to a NIfTI header, else None."""
    try:
        with gzip.open(path, "rb") as f:
            return "nifti-gz" if _nifti_header(f.read(SNIFF_BYTES)) else None
    except (OSError, EOFError, zlib.error):
        return None


class _Receiver:
    """``MultipartParser`` callbacks: the ``file`` part to ``folder/<stem><suffix>``, within the size limit."""

    def __init__(self, folder: Path, stem: str, limit: int) -> None:
        self.folder, self.stem, self.limit = folder, stem, limit
        self.field = b""
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.in_file = False
        self.done = False
        self.head = b""
        self.size = 0
        self.received = 0  # every part's headers and data, counted against limit + SLACK
        self.header_bytes = 0
        self.path: Path | None = None
        self.handle = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field_data,
            "on_header_value": self.header_value_data,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def _count(self, n: int) -> None:
        """Count ``n`` more bytes of the body's parts: refused past the limit plus ``SLACK``."""
        self.received += n
        if self.received > self.limit + SLACK:
            raise UploadError(413, f"upload too large: more than {megabytes(self.limit)} (the limit)")

    def _header_data(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_PART_HEADERS:
            raise UploadError(400, f"a multipart part's headers are too long: more than {MAX_PART_HEADERS} bytes")
        self._count(n)

    def part_begin(self) -> None:
        self.headers, self.header_field, self.header_value = {}, b"", b""
        self.header_bytes = 0

    def header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_data(end - start)
        self.header_field += data[start:end]

    def header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_data(end - start)
        self.header_value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.in_file = options.get(b"name") == FIELD.encode() and not self.done

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        if not self.in_file:
            return
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.limit:
            raise UploadError(413, f"file too large: more than {megabytes(self.limit)} (the limit)")
        if self.handle is None:
            self.head += chunk
            if len(self.head) >= SNIFF_BYTES:
                self._open()
        else:
            self.handle.write(chunk)

    def part_end(self) -> None:
        if self.in_file:
            if self.handle is None:
                self._open()
            self.in_file, self.done = False, True

    def _open(self) -> None:
        """Tell the kind from the bytes so far, open ``<stem><suffix>`` and write them."""
        if not self.head:
            raise UploadError(400, "the file is empty (0 bytes)")
        kind = sniff_kind(self.head[:SNIFF_BYTES])
        if kind is None:
            raise UploadError(415, f"not a file type the service reads: send {ACCEPTED}")
        self.path = self.folder / f"{self.stem}{KINDS[kind]}"
        self.handle = open(self.path, "wb")  # closed by close(), also on every failure
        self.handle.write(self.head)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


async def receive_upload(
    content_type: str, body: AsyncIterator[bytes], folder: Path, stem: str, limit: int
) -> tuple[Path, int]:
    """Stream the multipart ``body``'s ``file`` part to ``folder/<stem><suffix>``; the path and its size in bytes.

    Raises ``UploadError`` (and leaves no file behind) for a body that is not multipart, has no ``file`` part, or
    whose file is empty, over ``limit`` bytes or of a kind other than those in ``KINDS``; also for a part whose
    headers pass ``MAX_PART_HEADERS`` or parts (all their headers and data) that pass ``limit + SLACK`` together,
    so that a chunked body (no Content-Length to check first) cannot grow memory through a huge header or field.
    """
    mime, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise UploadError(400, f"send the X-ray as multipart/form-data with the field '{FIELD}'")
    receiver = _Receiver(folder, stem, limit)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
        receiver.close()
        if not receiver.done or receiver.path is None:
            raise UploadError(400, f"no file in the upload: send it in the multipart field '{FIELD}'")
        if receiver.path.name.endswith(KINDS["nifti-gz"]) and sniff_gzip_file(receiver.path) is None:
            raise UploadError(415, f"not a file type the service reads: send {ACCEPTED}")
        return receiver.path, receiver.size
    except Exception as err:
        receiver.close()
        if receiver.path is not None:
            receiver.path.unlink(missing_ok=True)
        if isinstance(err, UploadError):
            raise
        raise UploadError(400, f"the upload could not be read as multipart/form-data ({type(err).__name__})") from err
