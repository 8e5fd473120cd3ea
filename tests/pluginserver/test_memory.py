"""Memory is bounded by the caches alone, whatever a client sends, in both server modes.

Kong sends no Step after `kong.response.exit`, so anything waiting for one waits forever: under
kong-pdk's own gevent event handling every refused request parked a greenlet (~10 KB, never
freed). These drive 1,500 refusals of each kind through the real plugin server and bound the
growth of its RSS (that leak would be 15 MB a kind) and of its live handlers (none may remain).
The 10-minute soak (`make soak`) runs the same at length."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import bearer, guard_config
from tests.harness.idp import LocalIdP, Minter, SigningKey
from tests.harness.kong import Kong, rss_mb

PER_KIND = 1_500
WARM_UP = 600
# Allocator noise and the bounded caches (the 403 verdict, consumer lookups, key set) only:
# the leak this guards against was ~10 KB per refusal, 15 MB per kind here.
MAX_GROWTH_MB = 8


def drive(kong: Kong, count: int, send: Callable[[], int], expected: int) -> None:
    """`count` requests from 4 Kong-side connections at once; each must get `expected`."""
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: send(), range(count)))
    wrong = [s for s in statuses if s != expected]
    assert not wrong, f"{len(wrong)} answers were not {expected}: {sorted(set(wrong))}"


def test_refusals_leave_nothing_behind(each_mode_kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    kong = each_mode_kong
    entity = kong.plugin(guard_config(idp))
    admins = kong.plugin(guard_config(idp, required_roles=["realm:admin"]))
    assert kong.request(entity, bearer(minter.token())).status == 200  # keys held
    forger = SigningKey("RS256")
    kinds: dict[str, tuple[Callable[[], int], int]] = {}
    for name, token, route, status in [
        ("garbage", "garbage", entity, 401),
        ("expired", minter.token(exp=int(time.time()) - 3600), entity, 401),
        ("unknown kid", minter.token(key=forger, headers={"kid": uuid.uuid4().hex}), entity, 401),
        ("bad signature", minter.token(key=forger, headers={"kid": minter.key.kid}), entity, 401),
        ("missing role", minter.token(), admins, 403),
        ("no token", None, entity, 401),
    ]:
        headers = bearer(token) if token else []
        kinds[name] = ((lambda h=headers, r=route: kong.request(r, h).status), status)

    for send, status in kinds.values():
        drive(kong, WARM_UP // len(kinds), send, status)
    before = rss_mb(kong.server.pid or 0)
    for name, (send, status) in kinds.items():
        drive(kong, PER_KIND, send, status)
        grown = rss_mb(kong.server.pid or 0) - before
        print(f"{name}: {grown:+.1f} MB")
        assert grown < MAX_GROWTH_MB, f"+{grown:.1f} MB after {PER_KIND} '{name}' refusals"
    status = kong.status()
    assert status["Events"] == 0 and status["Running"] == 0, status
    assert kong.error_log == [], "every event was answered cleanly"
