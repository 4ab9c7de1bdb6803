"""``pointillist node init``: commented files that load to exactly the defaults."""

from __future__ import annotations

from dataclasses import fields


from pointillist.cli.config import Config, load_config
from pointillist.cli.main import main
from pointillist.cli.node_init import _SECTIONS, HELP
from pointillist.node.policy import Policy, load_policy


def test_init_writes_files_that_load_to_the_defaults(tmp_path, capsys):
    assert main(["node", "init", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "config.toml"), str(tmp_path / "policy.toml")]
    assert load_config(tmp_path / "config.toml") == Config()
    assert load_policy(tmp_path / "policy.toml") == Policy()


def test_every_policy_key_is_written_with_its_explanation(tmp_path):
    main(["node", "init", "--dir", str(tmp_path)])
    text = (tmp_path / "policy.toml").read_text()
    for section, cls in _SECTIONS:
        assert set(HELP[section]) == {f.name for f in fields(cls)}, section  # no field without help
        for f in fields(cls):
            assert f"# {HELP[section][f.name]}\n{f.name} = " in text


def test_edited_values_are_read(tmp_path):
    main(["node", "init", "--dir", str(tmp_path)])
    policy = tmp_path / "policy.toml"
    policy.write_text(policy.read_text().replace("queue_size = 8", "queue_size = 2"))
    assert load_policy(policy).limits.queue_size == 2


def test_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    (tmp_path / "policy.toml").write_text("# mine\n")
    assert main(["node", "init", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "exists (use --force" in err and err.count("\n") == 1
    assert (tmp_path / "policy.toml").read_text() == "# mine\n" and not (tmp_path / "config.toml").exists()
    assert main(["node", "init", "--dir", str(tmp_path), "--force"]) == 0
    assert load_policy(tmp_path / "policy.toml") == Policy()


def test_the_audit_section_uncommented_is_read_and_bad_values_are_one_line(tmp_path):
    import pytest

    from pointillist.protocol.errors import UsageError

    main(["node", "init", "--dir", str(tmp_path)])
    config = tmp_path / "config.toml"
    text = config.read_text()
    config.write_text(text.replace("# share = 0.1", "share = 0.1").replace(
        '# model = "/models/stable-diffusion-v1-5"', 'model = "/models/stable-diffusion-v1-5"'))
    loaded = load_config(config)
    assert (loaded.audit_share, str(loaded.audit_model)) == (0.1, "/models/stable-diffusion-v1-5")
    for body, message in (("[audit]\nshare = 2\n", "audit.share must be a number from 0 to 1"),
                          ("[audit]\nshare = true\n", "audit.share must be a number from 0 to 1"),
                          ("[audit]\nmodel = 3\n", "audit.model must be a string"),
                          ("[audit]\nshares = 1\n", "unknown setting(s) audit.shares"),
                          ("audit = 1\n", "[audit] must be a table")):
        config.write_text(body)
        with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_config(config)
