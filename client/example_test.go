package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/drover-hpc/drover/client"
)

// Start a process on the first node of the drover serve of $DROVER_HOME
// and wait for its exit, as MUSCLE3's AgentManager does.
func Example() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{})
	if errors.Is(err, client.ErrNoServe) {
		log.Fatal(err) // it says: start one with drover serve
	} else if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	nodes, err := c.Nodes(ctx)
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Start(ctx, client.StartRequest{
		Node: nodes[0].Name, Name: "sim", Args: []string{"./sim", "--fast"},
		Stdout: "sim.out", Cores: 1,
	})
	if errors.Is(err, client.ErrExists) {
		log.Fatal("a process named sim is already known; drover purge sim")
	} else if err != nil {
		log.Fatal(err)
	}
	for {
		exits, err := c.Finished(ctx, time.Minute) // returns as soon as one ends
		if err != nil {
			log.Fatal(err)
		}
		for _, e := range exits {
			fmt.Fprintln(os.Stdout, e.Name, e) // sim exit 0
			if e.Name == "sim" {
				return
			}
		}
	}
}
