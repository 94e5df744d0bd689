"""Pipelines: what `jukebox-pl run` executes, chosen by a recipe's ``pipeline:`` key."""

from jukebox_pl.pipelines.base import Pipeline, RunContext, run_recipe

__all__ = ["Pipeline", "RunContext", "run_recipe"]
