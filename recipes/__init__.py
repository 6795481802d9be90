"""Recipes built on selfjudge: experiments run from a source checkout, not part of the installed package."""
