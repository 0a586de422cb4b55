"""The live log of a bundle (clipsearch.store.live.schema describes it): writes, snapshots and folding."""

from clipsearch.store.live.fold import Carried, EmbedAgain, fold_since, start_fold
from clipsearch.store.live.log import LOCK_TIMEOUT_S, LiveLog
from clipsearch.store.live.schema import LIVE_FILE, LIVE_IMAGES, count_live_changes, live_generation
from clipsearch.store.live.state import LiveState, NewItem, Segment, with_text_vectors

__all__ = ["LIVE_FILE", "LIVE_IMAGES", "LOCK_TIMEOUT_S", "Carried", "EmbedAgain", "LiveLog", "LiveState", "NewItem",
           "Segment", "count_live_changes", "fold_since", "live_generation", "start_fold", "with_text_vectors"]
