"""Client segments (device, region) and the command line's times, durations and sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from connwise.config import TelemetrySection
from connwise.errors import ConfigError
from connwise.telemetry import clientinfo
from connwise.telemetry.clientinfo import ClientSegments, RegionTable, device_of
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.units import parse_duration, parse_size, parse_time


@pytest.mark.parametrize(("agent", "device"), [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/122.0", "desktop"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) Safari/605.1.15", "desktop"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) Mobile/15E148", "mobile"),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/122.0 Mobile Safari/537.36", "mobile"),
    ("Mozilla/5.0 (Linux; Android 13; SM-X700) Chrome/122.0 Safari/537.36", "tablet"),
    ("Mozilla/5.0 (iPad; CPU OS 17_3 like Mac OS X)", "tablet"),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
    ("curl/8.5.0", "bot"),
    ("-", "other"),
    ("", "other"),
    ("SomethingElse/1.0", "other"),
])
def test_device_of_user_agent(agent: str, device: str) -> None:
    assert device_of(agent) == device
    assert device_of(agent) == device  # cached answer is the same


def test_region_table_picks_the_most_specific_network() -> None:
    table = RegionTable([("10.0.0.0/8", "internal"), ("10.20.0.0/16", "eu-west"),
                         ("2001:db8::/32", "doc-v6")])
    assert len(table) == 3
    assert table.region_of("10.20.3.4") == "eu-west"
    assert table.region_of("10.1.2.3") == "internal"
    assert table.region_of("2001:db8::1") == "doc-v6"
    assert table.region_of("192.0.2.1") == ""
    assert table.region_of("not an address") == ""


def test_region_table_file_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "regions.txt"
    path.write_text("# comment\n10.0.0.0/8 internal\n10.0.0.0/33 broken\n")
    with pytest.raises(ConfigError, match=r"regions \(.*regions.txt:3\)") as info:
        RegionTable.from_file(path)
    assert "not a network" in str(info.value)
    path.write_text("10.0.0.0/8\n")
    with pytest.raises(ConfigError, match="a line must hold a network and a region"):
        RegionTable.from_file(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        RegionTable.from_file(tmp_path / "missing.txt")


def _filled(segments: ClientSegments, address: str,
            headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
    rec = ConnRecord("1", "client", "web", 0.0)
    rec.region = segments.region_of_address(address)
    segments.fill(rec, headers)
    return rec.region, rec.device


def test_client_segments_header_first_then_table_then_user_agent() -> None:
    segments = ClientSegments(RegionTable([("10.20.0.0/16", "eu-west")]),
                              region_header="CloudFront-Viewer-Country",
                              device_header="X-Device")
    ua = (b"User-Agent", b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) Mobile")
    # Header names match in any case; the header's region wins over the table's.
    assert _filled(segments, "10.20.1.1", [ua, (b"cloudfront-viewer-country", b"DE")]) == (
        "DE", "mobile")
    assert _filled(segments, "10.20.1.1", [ua]) == ("eu-west", "mobile")
    assert _filled(segments, "192.0.2.1", [ua]) == ("", "mobile")
    # The device header wins over the User-Agent; its value is lower-cased.
    assert _filled(segments, "10.20.1.1", [ua, (b"X-DEVICE", b"SmartTV")]) == (
        "eu-west", "smarttv")
    # Empty headers name nothing; without a User-Agent the device is "other".
    assert _filled(segments, "10.20.1.1", [(b"x-device", b""),
                                           (b"CloudFront-Viewer-Country", b"")]) == (
        "eu-west", "other")


def test_client_segments_cut_what_a_client_sends_and_work_without_settings() -> None:
    segments = ClientSegments(region_header="X-Region", device_header="X-Device")
    region, device = _filled(segments, "10.0.0.1", [(b"X-Region", b"r" * 10_000),
                                                    (b"X-Device", b"D" * 10_000)])
    assert region == "r" * clientinfo.MAX_SEGMENT and device == "d" * clientinfo.MAX_SEGMENT
    bare = ClientSegments()
    assert bare.regions is None
    assert _filled(bare, "10.0.0.1", [(b"X-Region", b"x"), (b"User-Agent", b"curl/8")]) == (
        "", "bot")


def test_long_user_agents_are_classified_but_not_cached() -> None:
    long_agent = "Mozilla/5.0 (iPhone) Mobile " + "x" * clientinfo.MAX_CACHED_AGENT
    assert device_of(long_agent) == "mobile"
    assert long_agent not in clientinfo._device_cache
    assert device_of("Mozilla/5.0 (iPad)") == "tablet"
    assert "Mozilla/5.0 (iPad)" in clientinfo._device_cache


def test_client_segments_without_headers_configured_find_the_user_agent_in_any_case() -> None:
    bare = ClientSegments()
    iphone = b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) Mobile"
    assert _filled(bare, "10.0.0.1", [(b"Host", b"a"), (b"user-AGENT", iphone)]) == (
        "", "mobile")
    assert _filled(bare, "10.0.0.1", [(b"Host", b"a"), (b"User-Agentx", iphone)]) == (
        "", "other")
    assert _filled(bare, "10.0.0.1", []) == ("", "other")
    # Cached by the raw value, never past the size limit.
    long_agent = iphone + b"x" * clientinfo.MAX_CACHED_AGENT
    assert _filled(bare, "10.0.0.1", [(b"User-Agent", long_agent)]) == ("", "mobile")
    assert bare._raw_devices == {iphone: "mobile"}


def test_client_segments_from_config_read_the_table(tmp_path: Path) -> None:
    path = tmp_path / "regions.txt"
    path.write_text("10.0.0.0/8 internal\n")
    segments = ClientSegments.from_config(TelemetrySection(regions=str(path)))
    assert segments.region_of_address("10.9.9.9") == "internal"
    assert ClientSegments.from_config(TelemetrySection()).region_of_address("10.9.9.9") == ""
    with pytest.raises(ConfigError, match="cannot be read"):
        ClientSegments.from_config(TelemetrySection(regions=str(tmp_path / "missing.txt")))


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("36h", 129600.0), ("30d", 2592000.0),
    ("2w", 1209600.0), ("1.5h", 5400.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, key="--max-age") == seconds


def test_times_absolute_relative_and_iso() -> None:
    assert parse_time("1700000000", key="--since") == 1_700_000_000.0
    assert parse_time("7d", key="--since", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_time("2024-03-12T08:00", key="--since") == 1710230400.0
    assert parse_time("2024-03-12T09:00+01:00", key="--since") == 1710230400.0
    assert parse_time("2024-03-12", key="--since") == 1710201600.0


@pytest.mark.parametrize(("text", "size"), [
    ("1000", 1000), ("500MB", 500_000_000), ("2GiB", 2 * 1024**3), ("64 kib", 65536),
    ("1.5gb", 1_500_000_000)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text, key="--max-size") == size


@pytest.mark.parametrize(("call", "message"), [
    (lambda: parse_time("yesterday", key="--since"), "--since = 'yesterday': not a time"),
    (lambda: parse_duration("soon", key="--max-age"), "--max-age = 'soon': not a duration"),
    (lambda: parse_duration("-5", key="--max-age"), "cannot be negative"),
    # float() takes these: a NaN age deleted nothing and said so, a NaN --since matched nothing.
    (lambda: parse_duration("nan", key="--max-age"), "--max-age = 'nan': not a duration"),
    (lambda: parse_duration("inf", key="--max-age"), "--max-age = 'inf': not a duration"),
    (lambda: parse_duration("1e400s", key="--max-age"), "not a duration"),
    (lambda: parse_time("nan", key="--since"), "--since = 'nan': not a time"),
    (lambda: parse_time("-inf", key="--until"), "--until = '-inf': not a time"),
    (lambda: parse_size("lots", key="--max-size"), "--max-size = 'lots': not a size"),
    (lambda: parse_size("5 parsecs", key="--max-size"), "not a size"),
])
def test_bad_input_names_the_option(call: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call()  # type: ignore[operator]
