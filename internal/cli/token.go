package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/client"
	"github.com/drover-hpc/drover/internal/join"
)

func newToken(e *env) *cobra.Command {
	vf := &verbFlags{}
	var asJSON bool
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "token [--ttl D] [--json]",
		Short: "Print a one-time enrolment token for drover agent --join",
		Long: `Prints a one-time token with which a node that drover serve did not launch
joins it: drover agent --join ADDR reads the token on stdin (or from
--token-file), checks that ADDR is this serve (the token pins its CA) and
gets the node's certificate. The token serves once and expires after --ttl
(1s to 24h). It is a secret: pass it on stdin or in a file, never on a
command line. The token goes to stdout; where to join and when it expires
go to stderr. --json prints {"token", "expires", "address"}.` + verbNote,
		Example: `  drover token | ssh node7 drover agent --join "$(hostname):7701"
  drover token --ttl 1h --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl < time.Second || ttl > join.MaxTTL {
				return usageError("--ttl must be between 1s and %v, got %v", join.MaxTTL, ttl)
			}
			return withClient(vf, func(ctx context.Context, c *client.Client) error {
				tok, err := c.JoinToken(ctx, ttl)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(e, tok)
				}
				fmt.Fprintln(e.stdout, tok.Token)
				fmt.Fprintf(e.stderr, "drover token: one-time, expires %s (in %v); on the node: drover agent --join %s, token on stdin\n",
					tok.Expires.Format(time.RFC3339), ttl, tok.Address)
				return nil
			})
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", join.DefaultTTL, "how long the token is valid")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addVerbFlags(cmd, vf)
	return cmd
}
