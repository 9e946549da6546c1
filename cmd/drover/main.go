// Command drover runs and supervises processes across the nodes of a cluster.
package main

import (
	"os"

	"github.com/drover-hpc/drover/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
