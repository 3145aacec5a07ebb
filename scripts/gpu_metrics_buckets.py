"""Per 200 ms bucket of a `lumen profile --gpu-metrics` trace: the share of time GPU work ran (from
the traced kernels, copies and sets) beside the mean of each sampled counter.
Run: python3 scripts/gpu_metrics_buckets.py bursts.lumen
"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print('meta', list(db.execute("select * from meta where key like 'gpu%'")))
ops = list(db.execute("select start,end from gpu_ops where kind in ('kernel','memcpy','memset')"))
t0 = min(o[0] for o in ops) - 200_000_000
names = [r[0] for r in db.execute("select distinct s.value from counters c join strings s on s.id=c.name")]
series = {n: list(db.execute("select ts,c.value from counters c join strings s on s.id=c.name where s.value=? order by ts", (n,))) for n in names}
print('bucket  busy% ' + ' '.join(f'{n[:14]:>14}' for n in names))
for b in range(0, 34):
    lo = t0 + b * 200_000_000; hi = lo + 200_000_000
    busy = sum(max(0, min(e, hi) - max(s, lo)) for s, e in ops) / 2e6
    means = []
    for n in names:
        v = [x for t, x in series[n] if lo <= t < hi]
        means.append(sum(v) / max(1, len(v)))
    print(f'{b:>6} {busy:6.1f} ' + ' '.join(f'{m:14.2f}' for m in means))
