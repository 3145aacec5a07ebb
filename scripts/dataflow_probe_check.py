#!/usr/bin/env python3
"""CPU checks of scripts/dataflow_probe.cu's bookkeeping, before any device time is spent on it.

1. Row shares: for 128, 132 and 144 blocks, every weight row of every stage is read by exactly one
   block, no page exceeds PAGE bytes, and the stage-4 and stage-5 local indices fit the shared
   arrays (gu, dn).
2. The ring protocol, under random interleavings: a producer per block issues pages into RING
   slots (waiting on each slot's `empty` barrier by parity), copies land in any order, consumer
   warp w takes pages p with p % NCONS == w (waiting on `full` by parity), stages wait on
   per-stage completion counters and the producer waits for stage 3 before stage 4's pages (and,
   as -DNO_AHEAD builds, for every stage's input). It fails on a deadlock or on a warp reading a
   page other than its own; RING not a multiple of NCONS (8 warps, 11 pages) must fail.
"""
import random

H, NQ, NKV, HD = 2048, 32, 4, 128
QKV, ATT, E, TOPK, I, PAGE, STAGES = (NQ + 2 * NKV) * HD, NQ * HD, 128, 8, 768, 16384, 6


def share(total, parts, part):
    return total * part // parts, total * (part + 1) // parts


def segments(st, b, g):
    """(weight, first row, rows, row bytes, tag) as the probe's segments() gives them."""
    s = []
    if st == 0:
        lo, hi = share(QKV, g, b)
        s.append(("qkv", lo, hi - lo, H * 2, lo))
    elif st == 2:
        lo, hi = share(H, g, b)
        s.append(("o", lo, hi - lo, ATT * 2, lo))
    elif st == 3:
        lo, hi = share(E, g, b)
        if hi > lo:
            s.append(("router", lo, hi - lo, H * 2, lo))
    elif st == 4:
        lo, hi = share(TOPK * I, g, b)
        slot = lo // I
        while slot < TOPK and slot * I < hi:
            j0, j1 = max(lo - slot * I, 0), min(hi - slot * I, I)
            s.append((f"gate_up{slot}", j0, j1 - j0, H * 2, slot * I + j0))
            s.append((f"gate_up{slot}", I + j0, j1 - j0, H * 2, -(slot * I + j0) - 1))
            slot += 1
    elif st == 5:
        lo, hi = share(H, g, b)
        for slot in range(TOPK):
            s.append((f"down{slot}", lo, hi - lo, I * 2, slot))
    return s


def check_row_shares():
    for g in (128, 132, 144):
        seen = set()
        for b in range(g):
            for st in range(STAGES):
                segs = segments(st, b, g)
                assert len(segs) <= 2 * TOPK
                for name, r0, count, row_bytes, tag in segs:
                    per = max(1, PAGE // row_bytes)
                    assert all(min(per, count - r) * row_bytes <= PAGE for r in range(0, count, per))
                    for k in range(count):
                        assert (name, r0 + k) not in seen, (name, r0 + k)
                        seen.add((name, r0 + k))
                        if st == 4:
                            lo, hi = share(TOPK * I, g, b)
                            unit = (tag if tag >= 0 else -tag - 1) + k
                            assert lo <= unit < hi and unit - lo < 64
                        if st == 5:
                            assert k < 24
        assert len(seen) == QKV + H + E + TOPK * 2 * I + TOPK * H
        print(f"row shares, {g} blocks: every row read once ({len(seen)} rows)")


def simulate(g, ncons, ring, pages, layers, no_ahead, rng):
    """One random interleaving; True when every block finishes, False on a deadlock."""
    seq = [(l, st) for l in range(layers) for st in range(STAGES)]
    order = {b: [i for i, (_, st) in enumerate(seq) for _ in range(pages[st][b])] for b in range(g)}
    first = {b: [sum(pages[seq[j][1]][b] for j in range(i)) for i in range(len(seq))] for b in range(g)}
    done = [0] * len(seq)
    full = {(b, s): 0 for b in range(g) for s in range(ring)}
    empty = dict(full)
    content, inflight = {}, []
    issued = {b: 0 for b in range(g)}
    stage = {b: 0 for b in range(g)}
    next_page = {(b, w): 0 for b in range(g) for w in range(ncons)}
    finished = {b: set() for b in range(g)}

    def ready(i):
        return i == 0 or done[i - 1] >= g

    while True:
        actions = [("land", k) for k in range(len(inflight))]
        for b in range(g):
            p = issued[b]
            if p < len(order[b]):
                i = order[b][p]
                l, st = seq[i]
                free = p < ring or empty[(b, p % ring)] % 2 != ((p // ring) - 1) & 1
                routed = st != 4 or done[l * STAGES + 3] >= g
                if free and routed and (not no_ahead or ready(i)):
                    actions.append(("issue", b))
            i = stage[b]
            if i < len(seq) and ready(i):
                pg = range(first[b][i], first[b][i] + pages[seq[i][1]][b])
                for w in range(ncons):
                    if w in finished[b]:
                        continue
                    mine = [q for q in pg if q % ncons == w and q >= next_page[(b, w)]]
                    if not mine:
                        actions.append(("warp_done", b, w))
                    elif full[(b, mine[0] % ring)] % 2 != (mine[0] // ring) & 1:
                        actions.append(("consume", b, w, mine[0]))
        if not actions:
            return all(stage[b] == len(seq) for b in range(g))
        a = rng.choice(actions)
        if a[0] == "issue":
            b = a[1]
            inflight.append((b, issued[b] % ring, issued[b]))
            issued[b] += 1
        elif a[0] == "land":
            b, s, p = inflight.pop(a[1])
            content[(b, s)] = p
            full[(b, s)] += 1
        elif a[0] == "consume":
            _, b, w, q = a
            if content.get((b, q % ring)) != q:
                raise AssertionError(f"block {b}, warp {w} read page {content.get((b, q % ring))} as page {q}")
            empty[(b, q % ring)] += 1
            next_page[(b, w)] = q + 1
        else:
            _, b, w = a
            finished[b].add(w)
            if len(finished[b]) == ncons:
                done[stage[b]] += 1
                stage[b] += 1
                finished[b] = set()


def check_protocol():
    rng = random.Random(1)
    for ncons, ring, must_hold in [(6, 12, True), (12, 12, True), (8, 8, True), (6, 24, True), (4, 12, True), (8, 11, False)]:
        failure = None
        for trial in range(300):
            g = rng.randint(2, 4)
            pages = [[0 if st == 1 else rng.randint(0, 20) for _ in range(g)] for st in range(STAGES)]
            try:
                if not simulate(g, ncons, ring, pages, 2, trial % 2 == 1, rng):
                    failure = f"deadlock with pages {pages}"
            except AssertionError as e:
                failure = str(e)
            if failure:
                break
        verdict = "holds" if failure is None else f"fails ({failure})"
        print(f"ring protocol, {ncons} consumer warps, {ring} pages: {verdict}")
        assert (failure is None) == must_hold, f"{ncons} warps and {ring} pages should {'hold' if must_hold else 'fail'}"


if __name__ == "__main__":
    check_row_shares()
    check_protocol()
