"""The command line, `mgsteer`: the top floor. It imports engine/, sae/, osc/, midi/ and gui/;
none of them imports it."""
