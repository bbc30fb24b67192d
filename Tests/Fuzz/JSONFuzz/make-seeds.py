#!/usr/bin/env python3
"""Writes the seeds of the JSON harness (JSONFuzz) into Tests/Fuzz/corpus-json.

Each seed is [maxDepth byte] and a document: the image documents Swiftlet reads
(OCI index, manifest, config; docker-save manifest.json) and the edge cases of
the grammar. '@' (64) is the default depth.
"""
import os, sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "corpus-json")
os.makedirs(out, exist_ok=True)

seeds = {
    "oci-index": '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":'
                 '"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",'
                 '"size":1234,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}',
    "oci-manifest": '{\n  "schemaVersion": 2,\n  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:aa", "size": 1469},\n'
                    '  "layers": [\n    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:bb", "size": 3370706},\n'
                    '    {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": "sha256:cc", "size": 0}\n  ]\n}\n',
    "oci-config": '{"architecture":"amd64","os":"linux","config":{"User":"1000:1000","Env":["PATH=/usr/local/sbin:/usr/bin","LANG=C.UTF-8"],'
                  '"Entrypoint":["/docker-entrypoint.sh"],"Cmd":["nginx","-g","daemon off;"],"WorkingDir":"/","ExposedPorts":{"80/tcp":{}},'
                  '"Labels":null,"StopSignal":"SIGQUIT"},"rootfs":{"type":"layers","diff_ids":["sha256:dd"]},'
                  '"history":[{"created":"2024-01-01T00:00:00Z","created_by":"/bin/sh -c #(nop) ADD file:abc in / ","empty_layer":true}]}',
    "docker-manifest": '[{"Config":"abc.json","RepoTags":["alpine:3.19"],"Layers":["d1/layer.tar","d2/layer.tar"]}]',
    "escapes": '["a\\"b\\\\c\\/d\\b\\f\\n\\r\\t", "\\u0041\\u00e9\\u20ac\\u0000", "\\ud83d\\ude00", "\\uDBFF\\uDFFF", "\u00e9\u20ac\U0001F600"]',
    "lone-surrogate": '"\\ud83d\\u0041"',
    "numbers": '[0,-0,1,-1,123456789012345678901234567890,0.5,-0.0,1e5,1E+5,1e-5,2.5E10,9223372036854775807,-9223372036854775808,9223372036854775808]',
    "bad-numbers": '[01]',
    "duplicates": '{"a":1,"b":{"a":[true,false,null]},"a":3,"":""}',
    "nested": '[' * 64 + ']' * 64,
    "too-deep": '{"a":' * 65 + '1' + '}' * 65,
    "trailing": '{"a":1} x',
    "control": '"a\tb"',
}
depths = {"nested": 64, "too-deep": 64, "numbers": 3, "duplicates": 2}
for name, text in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([depths.get(name, 64)]) + text.encode("utf-8"))
# Invalid UTF-8 inside a string.
with open(os.path.join(out, "bad-utf8"), "wb") as f:
    f.write(b"@[\"\xed\xa0\x80\", \"\xc3\x28\"]")
print("wrote %d seeds to %s" % (len(seeds) + 1, out))
