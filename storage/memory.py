"""Keep a storage process's resident memory flat however much data passes through it.

Measured on a getter moving 512 MiB (see docs/storage.md, "Memory"), two
things made resident memory grow with the file, not with what is in flight:

* **glibc's dynamic mmap threshold.** Buffers above 128 KiB start out as
  their own mappings, but each one freed raises the threshold (up to 32 MiB),
  so the sizes a storage process allocates most (1 MiB shares, 4 MiB
  segments) move between mappings and heap arenas as it runs, and every
  worker thread that touches them may grow an arena of its own.
  :func:`tune_allocator` fixes the policy instead: buffers up to
  :data:`MMAP_THRESHOLD` always come from the heap, at most
  :data:`ARENAS` arenas serve all threads, and free memory above
  :data:`TRIM_THRESHOLD` at the top of the heap goes back to the system.

  An earlier policy mapped every buffer over 256 KiB on its own. That kept
  memory just as flat but made each one cost a page fault per 4 KiB page when
  first written: copying 1 MiB took 0.4 ms instead of 0.02 ms, about 0.4 ms
  of CPU per MB for every copy a share goes through.
* **The store's LMDB map.** Reading a share through the map leaves its pages
  mapped into the process (counted as resident file pages) until the kernel
  needs them. :func:`release_view` drops the pages of a value that was just
  copied out (``madvise(MADV_DONTNEED)``; the page cache keeps them, so a
  second read costs a page fault, not disk I/O).

:func:`in_page_cache` tells whether reading a mapped value would wait for
the disk (``mincore``), so a holder can copy a cached share out on its event
loop and keep worker threads for the reads that may block.

All are Linux/glibc specific and silently do nothing (or answer False) elsewhere.
:func:`trim` hands free heap memory back after a large operation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import sys

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 64 << 20  # above the largest share (16 MiB) and segment buffers
ARENAS = 2  # the event loop's, and one the worker threads share
TRIM_THRESHOLD = 32 << 20
RELEASE_MIN = 64 << 10  # values smaller than this are left alone (few whole pages)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def tune_allocator() -> bool:
    """Fix glibc's allocation policy (see the module doc); True if it was set.

    Call it before the process allocates share-sized buffers: arenas made
    earlier stay."""
    if _LIBC is None:
        return False
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (_M_ARENA_MAX, ARENAS))
    return all([bool(_LIBC.mallopt(option, value)) for option, value in settings])


def trim() -> None:
    """Return free heap memory to the system (after a large put or get)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def release_view(view: memoryview) -> None:
    """Drop the whole pages under a memory-mapped ``view`` from this process's resident set.

    Only for views into a read-only shared file mapping (LMDB values read with
    ``buffers=True``), after their bytes were copied out.
    """
    if _LIBC is None or len(view) < RELEASE_MIN:
        return
    info = _PyBuffer()
    try:
        _get_buffer(view, ctypes.byref(info), 0)
    except (BufferError, TypeError, ValueError):
        return
    try:
        start = -(-info.buf // _PAGE) * _PAGE
        end = (info.buf + info.len) // _PAGE * _PAGE
        if end > start:
            _LIBC.madvise(start, end - start, _MADV_DONTNEED)
    finally:
        _release_buffer(ctypes.byref(info))


_RESIDENT_BIT = bytes(i & 1 for i in range(256))  # mincore: only the low bit is defined


def in_page_cache(view: memoryview) -> bool:
    """True when every page under a memory-mapped ``view`` is in the page cache, so copying
    it out cannot wait for the disk; False when not, or when this cannot be told."""
    if _LIBC is None or not len(view):
        return False
    info = _PyBuffer()
    try:
        _get_buffer(view, ctypes.byref(info), 0)
    except (BufferError, TypeError, ValueError):
        return False
    try:
        start = info.buf // _PAGE * _PAGE
        pages = -(-(info.buf + info.len - start) // _PAGE)
        flags = (ctypes.c_ubyte * pages)()
        if _LIBC.mincore(start, pages * _PAGE, flags) != 0:
            return False
        return bytes(flags).translate(_RESIDENT_BIT).count(1) == pages
    finally:
        _release_buffer(ctypes.byref(info))
