"""Diagnoses that adapt a model and measure what it cost: :mod:`.specialise` (gain on a domain
against forgetting of general text and knowledge), :mod:`.knowledge` (a fixed general-ability check)."""
