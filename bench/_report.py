"""bench/_report.py: the figures and markdown tables of bench/loops.py's and bench/_adapters.py's
reports (mqtt.py, nats.py)."""
import statistics


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 10 ** digits):
        return "{:,}".format(int(round(v)))
    return "%.*g" % (digits, v)


def ms(r, p):
    v = ((r or {}).get("latency_us") or {}).get(p)
    return fmt(v / 1000.0) if v is not None else "-"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
