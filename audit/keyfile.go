package audit

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/agentsec/agentsec/internal/regularfile"
)

// maxKeyFile bounds a signer key file: a key is about a hundred bytes.
const maxKeyFile = 4 << 10

// ReadSignerKeyFile reads the signer key (the NAME.key file GenerateKey's
// keygen writes) from the file at path, for NewSigner to parse. It refuses
// a file that is not a regular one (a pipe would hang the reader, a
// device fill its memory), one larger than 4 KiB, and a key other users
// may read or write, or its group write: whoever reads the key can sign
// checkpoints as the log, and whoever writes it can swap it.
func ReadSignerKeyFile(path string) (string, error) {
	data, fi, err := regularfile.ReadFile(path, maxKeyFile)
	if err != nil {
		return "", err
	}
	key := strings.TrimSpace(string(data))
	if perm := fi.Mode().Perm(); strings.HasPrefix(key, "PRIVATE+KEY+") && runtime.GOOS != "windows" && perm&0o027 != 0 {
		return "", fmt.Errorf("%s may be read or written by other users (mode %#o): whoever reads the signer key can sign as the log; chmod 600 %s (for a Kubernetes secret, defaultMode: 0400)", path, perm, path)
	}
	return key, nil // NewSigner parses it
}
