"""The one registry idiom and what is filed in it: stages, generators, job kinds."""

from __future__ import annotations

import dataclasses

import pytest

from facefab.manifests.registry import Registry


def test_registry_registers_by_decorator_and_names_the_choices_on_a_miss():
    things: Registry[type] = Registry("widget")

    @things.register("b")
    class B:
        pass

    things.register("a")(int)
    assert things.get("b") is B and things.names() == ["b", "a"] and "a" in things and len(things) == 2
    with pytest.raises(KeyError, match=r"unknown widget 'c'; choose from \['b', 'a'\]"):
        things.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        things.register("a")(str)
    things.register("a")(int)  # the same object again (a module imported twice) is fine


def test_every_preprocess_stage_has_one_name_everywhere():
    from facefab.operators.base import STAGES
    from facefab.pipelines.preprocess import STAGE_ORDER, PreprocessConfig, build_operators

    sections = {f.name for f in dataclasses.fields(PreprocessConfig)}
    for name in STAGE_ORDER:
        cls = STAGES.get(name)
        assert cls.name == name and name in sections, name
    ops = build_operators(PreprocessConfig(operators=["probe", "shots", "faces"]))
    assert [op.name for op in ops] == ["probe", "shots", "faces"]
    with pytest.raises(ValueError, match="unknown operator"):
        build_operators(PreprocessConfig(operators=["probe", "face_track"]))


def test_generators_and_job_kinds_use_the_registry():
    from facefab.jobs.spec import KINDS
    from facefab.models.registry import GENERATORS, get

    assert isinstance(GENERATORS, Registry) and len(GENERATORS) == 10
    assert get("MyTalk").title == "MyTalk"
    with pytest.raises(KeyError, match="unknown generator 'nope'"):
        get("nope")
    assert isinstance(KINDS, Registry) and sorted(KINDS) == ["dub", "preprocess", "train"]


def test_every_trainable_name_facefab_models_shows_is_accepted_by_facefab_train():
    from facefab.models.registry import GENERATORS
    from facefab.training.catalog import stages_of, trainable_names

    shown = {name for spec in GENERATORS.values() for name in spec.trainable}
    assert {"mytalk", "facevid2vid"} <= shown
    assert shown <= set(trainable_names())
    assert stages_of("mytalk") == ("mytalk-motion", "mytalk-render")
    assert stages_of("facevid2vid") == ("facevid2vid",)
    with pytest.raises(ValueError, match="unknown training system 'nope'; choose from .*mytalk"):
        stages_of("nope")
