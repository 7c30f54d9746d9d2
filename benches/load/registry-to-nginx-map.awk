#!/usr/bin/awk -f
# Converts an icp-gate registry snapshot (format v1: a header line, `name TAB status [TAB ...]`
# records, an `end count=... sha256=...` trailer) into the body of an nginx
#
#     map $host $icp_block { hostnames; default 1; ... }
#
# that makes the same allow/block decision as the gate on a `require = "connected"` listener:
# a `connected` record gives 0 (forward), every other status gives 1 (block), and a host no
# record covers falls to `default 1` (unfiled, blocked).
#
# A domain record covers the name and every name below it, as in the gate, so it is written in
# nginx's `.example.com` form (matches example.com and *.example.com; nginx puts the name in its
# exact hash too). The most specific record wins in both. An IPv4 record is written as is (exact
# match only, like the gate). What nginx cannot express is counted and skipped, with a note on
# standard error: non-ASCII names (the gate normalizes them to A-labels), IPv6 literals, and
# `expires-at` (the 4th field: the converter ignores it; the synthetic registries have none).
#
# Usage: awk -f registry-to-nginx-map.awk registry.tsv > map.conf
# The output holds only the `name value;` lines: the caller wraps them in the map block.

BEGIN { FS = "\t"; records = 0; skipped = 0; expiring = 0; trailer = 0 }

NR == 1 {
    if ($0 !~ /^icp-gate-registry 1 /) {
        print "registry-to-nginx-map: " FILENAME ": not an icp-gate registry v1 snapshot" > "/dev/stderr"
        exit 2
    }
    next
}

/^end count=/ { trailer = 1; next }

{
    name = tolower($1)
    sub(/\.$/, "", name)
    status = $2
    if (NF >= 4 && $4 != "") expiring++
    if (name !~ /^[a-z0-9_.-]+$/) { skipped++; next }      # non-ASCII or IPv6: not expressible
    value = (status == "connected") ? 0 : 1
    if (name ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/)
        printf "%s %d;\n", name, value
    else
        printf ".%s %d;\n", name, value
    records++
}

END {
    if (!trailer) {
        print "registry-to-nginx-map: " FILENAME ": no trailer line (truncated snapshot?)" > "/dev/stderr"
        exit 2
    }
    if (skipped)
        print "registry-to-nginx-map: skipped " skipped " names nginx cannot match (non-ASCII or IPv6)" > "/dev/stderr"
    if (expiring)
        print "registry-to-nginx-map: note: " expiring " records have an expires-at, which the map ignores" > "/dev/stderr"
    print "registry-to-nginx-map: " records " entries" > "/dev/stderr"
}
