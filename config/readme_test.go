package config_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/agentsec/agentsec/config"
)

// The example configurations in README.md are valid: each ```yaml block
// that starts with "# agentsec.yaml" parses, once its placeholders — a
// shortened token hash, files on the operator's machine — are filled in.
func TestREADMEExamples(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	dir := exampleDir(t)
	blocks := regexp.MustCompile("(?s)```yaml\n(# agentsec\\.yaml.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) < 2 {
		t.Fatalf("found %d example configurations in README.md, want the desktop one and the fleet one", len(blocks))
	}
	shortHash := regexp.MustCompile(`token_sha256: ([0-9a-f]+)…`)
	keyFile := regexp.MustCompile(`key_file: \S+`)
	for i, b := range blocks {
		yaml := shortHash.ReplaceAllStringFunc(b[1], func(m string) string {
			return "token_sha256: " + strings.Repeat(shortHash.FindStringSubmatch(m)[1], 64)[:64]
		})
		yaml = keyFile.ReplaceAllString(yaml, "key_file: demo.key")
		yaml = strings.ReplaceAll(yaml, "/var/lib/agentsec/", filepath.ToSlash(dir)+"/")
		yaml = strings.ReplaceAll(yaml, "/mnt/anchor/", filepath.ToSlash(filepath.Join(dir, "anchor"))+"/")
		if _, err := config.Parse([]byte(yaml), dir); err != nil {
			t.Errorf("README example %d does not parse:\n%v\n%s", i+1, err, yaml)
		}
	}
}
