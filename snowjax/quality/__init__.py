"""Phase-2 data: the BERT quality annotator, scoring at scale, per-language top-token selection."""
