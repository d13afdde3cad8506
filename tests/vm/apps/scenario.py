"""The real-apps VM scenarios (tests/vm/apps), run by /init as `scenario.py <name>`: prints
EVIDENCE/RESULT lines and ends with `SCENARIO <name> PASS` or `SCENARIO <name> FAIL: <why>`."""
import os
import re
import sys
import time
import traceback

sys.path.insert(0, "/apps")
from common import Fail, poweroff, read, watchdog  # noqa: E402


def budget():
    m = re.search(r"oomguard\.budget=(\d+)", read("/proc/cmdline", ""))
    return int(m.group(1)) if m else 600


def dump():
    for log in sorted(os.listdir("/tmp")):
        if log.endswith(".log"):
            print("---- /tmp/%s (tail) ----" % log)
            for line in (read("/tmp/" + log, "") or "").splitlines()[-30:]:
                print("    | " + line)


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    t0 = time.time()
    watchdog(name, budget(), dump)
    print("SCENARIO %s BEGIN" % name, flush=True)
    try:
        if name == "apps_facts":
            import facts
            facts.run()
        elif name == "apps_client_cost":
            import bench
            bench.client_cost()
        elif name in ("apps_rabbitmq", "apps_rabbitmq_guard"):
            import rabbit
            getattr(rabbit, name)()
        elif name in ("bench_celery_rabbitmq", "bench_celery_redis"):
            import brokers
            getattr(brokers, name)()
        elif name in ("bench_runc", "apps_runc"):
            import runc_bench
            getattr(runc_bench, name)()
        elif name in ("apps_gunicorn", "apps_celery", "apps_gunicorn_overlap"):
            import suite
            getattr(suite, name)()
        elif name in ("bench_apps_gunicorn", "bench_apps_gunicorn_x2", "bench_apps_celery",
                      "apps_celery_warm"):
            import bench
            getattr(bench, name)()
        else:
            raise Fail("unknown scenario %r" % name)
    except Fail as e:
        dump()
        print("EVIDENCE scenario seconds: %.0f" % (time.time() - t0))
        print("SCENARIO %s FAIL: %s" % (name, e), flush=True)
        poweroff()
    except Exception:
        traceback.print_exc()
        dump()
        print("SCENARIO %s FAIL: %s" % (name, traceback.format_exc().splitlines()[-1]), flush=True)
        poweroff()
    print("EVIDENCE scenario seconds: %.0f" % (time.time() - t0))
    print("SCENARIO %s PASS" % name, flush=True)
    poweroff()


if __name__ == "__main__":
    main()
