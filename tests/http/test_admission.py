"""The HTTP phase's admission decision, without I/O."""

from __future__ import annotations

from tornado_echo.http.admission import ADDRESS_FULL, FULL, HTTPAdmission, Verdict


def test_admits_up_to_the_limit_then_evicts_the_idle_hog_for_a_newcomer() -> None:
    slots: HTTPAdmission[str] = HTTPAdmission(limit=4)
    for n in range(4):
        assert slots.admit(f"hog{n}", "198.51.100.7") == Verdict(True)
    # Full: a newcomer from elsewhere takes the hog's longest idle connection.
    assert slots.admit("visitor", "203.0.113.1") == Verdict(True, None, "hog0")
    assert len(slots) == 4 and slots.held_by("198.51.100.7") == 3
    # The hog's own newcomer may only replace its own idle connection.
    assert slots.admit("hog4", "198.51.100.7") == Verdict(True, None, "hog1")


def test_the_address_holding_most_loses_its_longest_idle_connection() -> None:
    slots: HTTPAdmission[str] = HTTPAdmission(limit=5)
    for conn, address in [("a1", "10.0.0.1"), ("b1", "10.0.0.2"), ("b2", "10.0.0.2")]:
        slots.admit(conn, address)
    slots.admit("b3", "10.0.0.2")
    slots.admit("a2", "10.0.0.1")
    slots.busy("b2")
    slots.idle("b2")  # idle again, now the most recently
    assert slots.admit("c1", "10.0.0.3").evict == "b1"
    assert slots.admit("c2", "10.0.0.3").evict in ("a1", "b3")  # two hold 2 each


def test_busy_connections_are_never_evicted_and_a_full_house_refuses() -> None:
    slots: HTTPAdmission[str] = HTTPAdmission(limit=2)
    slots.admit("x", "10.0.0.1")
    slots.admit("y", "10.0.0.1")
    slots.busy("x")
    slots.busy("y")
    assert slots.admit("z", "10.0.0.2") == Verdict(False, FULL)
    slots.idle("y")
    assert slots.admit("z", "10.0.0.2").evict == "y"


def test_a_newcomer_does_not_evict_an_address_holding_fewer_than_its_own() -> None:
    slots: HTTPAdmission[str] = HTTPAdmission(limit=3)
    slots.admit("a", "10.0.0.1")
    for conn in ("m1", "m2"):
        slots.admit(conn, "10.0.0.9")
        slots.busy(conn)
    # 10.0.0.9 would hold 3 after admission; 10.0.0.1's only idle slot is fewer.
    assert slots.admit("m3", "10.0.0.9") == Verdict(False, FULL)
    assert slots.admit("d", "10.0.0.4").evict == "a"  # equals: 1 against 1


def test_per_address_cap_counts_ipv6_per_64_and_exempts_proxies() -> None:
    slots: HTTPAdmission[str] = HTTPAdmission(limit=100, per_address=2)
    assert slots.admit("a", "2001:db8::1").admitted
    assert slots.admit("b", "2001:db8::2").admitted
    assert slots.admit("c", "2001:db8::3") == Verdict(False, ADDRESS_FULL)
    assert slots.admit("d", "2001:db8:0:1::1").admitted  # another /64
    assert slots.admit("e", "::ffff:10.0.0.1").admitted
    assert slots.admit("f", "10.0.0.1").admitted
    assert slots.admit("g", "10.0.0.1") == Verdict(False, ADDRESS_FULL)  # mapped = plain
    for conn in "pqrs":
        assert slots.admit(conn, "127.0.0.1", exempt=True).admitted
    slots.release("a")
    assert slots.admit("c", "2001:db8::3").admitted


def test_release_is_idempotent_and_forgets_the_address() -> None:
    slots: HTTPAdmission[str] = HTTPAdmission(limit=1)
    slots.admit("a", "10.0.0.1")
    slots.release("a")
    slots.release("a")
    slots.busy("a")
    slots.idle("a")  # late news of a connection already gone changes nothing
    assert len(slots) == 0 and slots.held_by("10.0.0.1") == 0
    assert slots.admit("b", "10.0.0.2") == Verdict(True)
