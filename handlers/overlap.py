"""Encode and upload at once: each part goes up as soon as the encoder finishes it, while the
next parts are still being encoded (a large snapshot then takes about the slower of the two,
not their sum).

Two phases, so each failure is blamed on its own stage: :meth:`Overlap.encoded` waits for the
encoder (uploads run meanwhile), :meth:`Overlap.uploaded` for the uploads left. On failure the
uploads and the encoding are cancelled and the spool is cleaned; parts already in the store
stay behind as orphans (no metadata: invisible; ``prune --orphans`` removes them).
"""

from __future__ import annotations

import asyncio

from handlers.encode import EncodedPart, EncodedSnapshot, Encoder
from handlers.job import SnapshotJob
from handlers.sources import OpenedSource
from handlers.upload import UploadedParts, Uploader, part_info, uploaded


class Overlap:
    def __init__(
        self, encode: Encoder, upload: Uploader, job: SnapshotJob, source: OpenedSource
    ) -> None:
        self._upload = upload
        self._job = job
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Queue[EncodedPart] = asyncio.Queue()
        self._puts: list[asyncio.Task[bool]] = []
        self._encoding = asyncio.ensure_future(encode(job, source, self._on_part))

    def _on_part(self, part: EncodedPart) -> None:
        """Called in the encoder's thread, in index order."""
        self._loop.call_soon_threadsafe(self._ready.put_nowait, part)

    async def encoded(self) -> EncodedSnapshot:
        """Wait for the encoder, starting each part's upload as it comes."""
        try:
            # Parts are queued before the encoder's result is set (same loop, FIFO).
            while not (self._encoding.done() and self._ready.empty()):
                part = await self._next_part()
                if part is not None:
                    info = part_info(self._job, part)
                    self._puts.append(asyncio.create_task(self._upload.put(info, part.path)))
            return self._encoding.result()
        except BaseException:
            await self._stop()
            raise

    async def uploaded(self, encoded: EncodedSnapshot) -> UploadedParts:
        """Wait for the uploads left; the spool files go either way."""
        try:
            vouched = list(await asyncio.gather(*self._puts))
        except BaseException:
            await self._stop()
            raise
        finally:
            encoded.discard()
        infos = tuple(part_info(self._job, part) for part in encoded.parts)
        return uploaded(infos, vouched)

    async def _next_part(self) -> EncodedPart | None:
        """The next finished part, or None once the encoder ended (parts may still be queued)."""
        if not self._ready.empty():
            return self._ready.get_nowait()
        getter = asyncio.ensure_future(self._ready.get())
        await asyncio.wait({getter, self._encoding}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        return None

    async def _stop(self) -> None:
        """Cancel the uploads and the encoding: its threads stop at their next slice of rows
        and delete what they wrote (a large encode is not waited out: shutdown and deadlines
        stay bounded). The first error is the one raised: a later one from the encoder (which
        had no part in it) is dropped here."""
        for put in self._puts:
            put.cancel()
        self._encoding.cancel()
        await asyncio.gather(*self._puts, self._encoding, return_exceptions=True)
        finished = self._encoding.done() and not self._encoding.cancelled()
        if finished and self._encoding.exception() is None:
            self._encoding.result().discard()  # it had finished before the cancel
