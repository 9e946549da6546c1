package cluster

import (
	"errors"
	"strings"
	"testing"

	"github.com/drover-hpc/drover/internal/errdefs"
)

func TestCheckName(t *testing.T) {
	for _, good := range []string{"sim", "sim.3", "1.ok.0", "a_b-c", "macro[3]", "micro[1][2]", "x-", strings.Repeat("n", MaxNameLen)} {
		if err := CheckName(good); err != nil {
			t.Errorf("%q refused: %v", good, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "-rf", "a\nb", "a\rb", "a b", "a/b", "a\x00b", "tab\t", "é", "a;b", "$x", "a\x1b[31m", strings.Repeat("n", MaxNameLen+1)} {
		err := CheckName(bad)
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%q: %v, want errdefs.ErrInvalid", bad, err)
			continue
		}
		// The message is one line whatever the name holds.
		if strings.ContainsAny(err.Error(), "\n\r\x00\x1b") {
			t.Errorf("%q: message %q has a control character", bad, err)
		}
	}
}
