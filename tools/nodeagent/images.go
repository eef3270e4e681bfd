// Images cannot be pulled or unpacked here; instead --image rules map an image
// repository to a local directory of executables (e.g. a Python venv's bin).
package main

import (
	"fmt"
	"strings"
)

type imageRule struct{ prefix, binDir string }

// repository strips the tag/digest and the implicit Docker Hub registry, so
// "docker.io/library/python:3.11" and "python:3.11" both become "python".
func repository(image string) string {
	repo := image
	if i := strings.Index(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	// A colon after the last slash is a tag; one before it belongs to a registry port.
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	for _, p := range []string{"docker.io/library/", "docker.io/"} {
		if strings.HasPrefix(repo, p) {
			return strings.TrimPrefix(repo, p)
		}
	}
	return repo
}

// resolveImage returns the bin dir of the first matching rule.
func resolveImage(rules []imageRule, image string) (string, error) {
	repo := repository(image)
	for _, r := range rules {
		if strings.HasPrefix(repo, r.prefix) {
			return r.binDir, nil
		}
	}
	var flags []string
	for _, r := range rules {
		flags = append(flags, "--image "+r.prefix+"="+r.binDir)
	}
	have := "no --image flags were given"
	if len(flags) > 0 {
		have = "configured: " + strings.Join(flags, ", ")
	}
	return "", fmt.Errorf("the node agent has no local runtime for image %q (repository %q); %s", image, repo, have)
}
