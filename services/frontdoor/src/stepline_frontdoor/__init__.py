"""Stepline front door: the web console and its HTTP/JSON API over a read model of runs."""
