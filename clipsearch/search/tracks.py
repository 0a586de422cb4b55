"""Videos' sound tracks in a collection that indexes them (its manifest's audio record says
`video_sound`): each a sound item of its own under its video's key and uri, marked
(clipsearch.store.segments.SOUND_OF_VIDEO), which clipsearch.search.writes writes, edits and deletes
with its video. The key is the link: a video's track is the marked sound item with the video's key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clipsearch.config import AudioSampling
from clipsearch.errors import AudioDecodeError, InvalidQuery, ItemNotFound, NoSoundTrack
from clipsearch.modality import Modality
from clipsearch.store.collection import Collection
from clipsearch.store.live import LiveLog, NewItem
from clipsearch.store.segments import VIDEO_KEY, carried_over, is_sound_of_video
from clipsearch.util.audio import AudioClip, read_audio


class SoundTracks:
    """The sound tracks of one collection's videos, read from its live log and its snapshot."""

    def __init__(self, collection: Collection, live: LiveLog, sampling: AudioSampling) -> None:
        self.collection, self.live, self.sampling = collection, live, sampling

    @property
    def indexed(self) -> bool:
        """Whether this collection indexes its videos' sound tracks."""
        return self.sampling.video_sound

    def read(self, data: bytes, key: str, sample_rate: int, field: str) -> AudioClip | None:
        """The sound track of an uploaded video to be written under `key`, read at `sample_rate` within
        the collection's bounds (None for a silent video). A key that names a sound item which is not a
        video's track is refused, naming `field`.key: the track would replace it."""
        try:
            track = read_audio(data, sample_rate, self.sampling, of_video=True)
        except NoSoundTrack:
            return None
        except AudioDecodeError as error:
            raise type(error)(f"its sound track: {error.reason}", field) from None
        held = self.live.id_of(Modality.AUDIO, key)
        if held is not None and self.id_of(key) is None and self._exists(held):
            raise InvalidQuery(f"{field}.key", f"names sound item {held}, and this video's sound track is kept under "
                                               "its key: give the video another key")
        return track

    def id_of(self, key: str) -> int | None:
        """The id of the sound track of the video with `key`, if it has one now."""
        sound_id = self.live.id_of(Modality.AUDIO, key)
        if sound_id is None:
            return None
        try:
            sound = self.collection.item(sound_id)
        except ItemNotFound:  # deleted: its key stays known
            return None
        return sound_id if is_sound_of_video(sound.extra) else None

    def of_videos(self, item_ids: Sequence[int]) -> list[int]:
        """The ids of the sound tracks of the videos among `item_ids` (none looked up in a collection that
        indexes no tracks: a delete by filter may name a million items)."""
        if not self.indexed:
            return []
        found = []
        for item_id in item_ids:
            key = self.live.key_of(item_id)
            if key is None or not self._exists(item_id, Modality.VIDEO):
                continue
            if (sound_id := self.id_of(key)) is not None:
                found.append(sound_id)
        return found

    def edited(self, sound_id: int, caption: str | None, video_metadata: dict[str, Any]) -> NewItem:
        """A video's sound track with the video's new caption and metadata, its windows kept."""
        sound = self.collection.item(sound_id)
        metadata = carried_over({name: value for name, value in video_metadata.items() if name != VIDEO_KEY},
                                sound.extra)
        key = self.live.key_of(sound_id)
        assert key is not None  # found by its key
        return NewItem(key, Modality.AUDIO, sound.uri, caption, metadata, sound.content_hash,
                       self.collection.segment_vectors(sound_id)[1])

    def _exists(self, item_id: int, modality: Modality | None = None) -> bool:
        """Whether item `item_id` is in the collection now (and of `modality`, when given)."""
        try:
            item = self.collection.item(item_id)
        except ItemNotFound:
            return False
        return modality is None or item.modality is modality
