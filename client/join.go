package client

import (
	"context"
	"time"

	"github.com/drover-hpc/drover/api/droverpb"
)

// JoinToken is a one-time enrolment token for `drover agent --join`.
type JoinToken struct {
	Token   string    `json:"token"`   // secret: give it to the node on stdin or in a file
	Expires time.Time `json:"expires"` // it is refused after this
	Address string    `json:"address"` // HOST:PORT to pass to --join
}

// JoinToken has serve make a one-time enrolment token that expires after
// ttl (0: serve's default, 10 minutes).
func (c *Client) JoinToken(ctx context.Context, ttl time.Duration) (JoinToken, error) {
	r, err := droverpb.NewJoinClient(c.conn).CreateToken(ctx, &droverpb.CreateTokenRequest{TtlMs: ttl.Milliseconds()})
	if err != nil {
		return JoinToken{}, c.fail(err)
	}
	return JoinToken{Token: r.GetToken(), Expires: time.UnixMilli(r.GetExpiresUnixMs()).UTC(), Address: r.GetAddress()}, nil
}
