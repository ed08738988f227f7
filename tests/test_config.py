"""Settings: file, then environment, then flags; relative paths resolve where a person expects."""

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from reconciler.config import PostgresSettings, load_settings
from reconciler.errors import ConfigError


def test_file_paths_are_relative_to_the_file_and_flag_paths_to_the_cwd(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir()
    cfg = cfg_dir / "reconciler.toml"
    cfg.write_text('[audit]\nrules_dir = "../rules"\nreport_dir = "../out"\n[firestore]\nproject = "p-file"\n')
    monkeypatch.chdir(tmp_path / "config")
    s = load_settings(cfg, env={})
    assert s.rules_dir.resolve() == tmp_path / "rules" and s.report_dir.resolve() == tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    s = load_settings(cfg, env={"GOOGLE_CLOUD_PROJECT": "p-env"}, overrides={"audit.report_dir": "here"})
    assert s.report_dir == tmp_path / "here" and s.firestore.project == "p-env"
    s = load_settings(cfg, env={"GOOGLE_CLOUD_PROJECT": "p-env"}, overrides={"firestore.project": "p-flag"})
    assert s.firestore.project == "p-flag"


def test_libpq_environment_is_used_when_no_dsn_is_given():
    assert load_settings(None, env={}).postgres.dsn == ""  # psycopg then reads PGHOST, PGUSER, ...


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="RECONCILER_CONFIG: is set but empty"):
        load_settings(None, env={"RECONCILER_CONFIG": " "})


def test_the_shipped_example_config_is_valid():
    s = load_settings(Path(__file__).parents[1] / "config" / "reconciler.toml", env={})
    assert s.rules_dir.resolve() == (Path(__file__).parents[1] / "rules").resolve() and s.entities == ("customers",)


def test_the_settle_delay_can_be_set_from_the_environment():
    shipped = Path(__file__).parents[1] / "config" / "reconciler.toml"
    assert load_settings(shipped, env={}).settle_s == 5.0
    assert load_settings(shipped, env={"RECONCILER_SETTLE_S": "0"}).settle_s == 0.0
    assert load_settings(None, env={"RECONCILER_SETTLE_S": "1.5"}).settle_s == 1.5
    with pytest.raises(ConfigError, match="RECONCILER_SETTLE_S: must be a number, got 'soon'"):
        load_settings(None, env={"RECONCILER_SETTLE_S": "soon"})
    with pytest.raises(ConfigError, match="audit.settle_s"):
        load_settings(None, env={"RECONCILER_SETTLE_S": "-1"})


_TIMEOUT_VALUES = st.one_of(st.integers(-10**7, 10**7),
                            st.floats(allow_nan=True, allow_infinity=True, width=64),
                            st.floats(min_value=0, max_value=0.01))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["lock_timeout_s", "statement_timeout_s"]), value=_TIMEOUT_VALUES)
def test_postgres_timeouts_are_0_or_at_least_a_millisecond(tmp_path, key, value):
    """Seconds, as an int or a float: 0 turns the timeout off; a negative, not-finite or sub-millisecond value
    (Postgres counts milliseconds: it would silently be 0, off) is an error naming the file and the key."""
    cfg = tmp_path / "t.toml"
    text = repr(value)  # Python's float text is TOML's, nan and inf included
    cfg.write_text(f"[postgres]\n{key} = {text}\n")
    good = math.isfinite(value) and (value == 0 or value >= 0.001)
    if good:
        s = load_settings(cfg, env={})
        assert s.postgres.timeouts()[key] == float(value) and isinstance(s.postgres.timeouts()[key], float)
    else:
        with pytest.raises(ConfigError, match=f"{cfg}: postgres.{key}: must be"):
            load_settings(cfg, env={})


def test_the_shipped_postgres_timeouts():
    s = load_settings(Path(__file__).parents[1] / "config" / "reconciler.toml", env={})
    assert s.postgres.timeouts() == {"lock_timeout_s": 30.0, "statement_timeout_s": 600.0}
    assert PostgresSettings().timeouts() == s.postgres.timeouts()  # the code's defaults agree
