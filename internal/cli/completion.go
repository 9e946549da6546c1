package cli

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-hpc/drover/client"
)

func newCompletion(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "Print a shell completion script",
		Long: `Prints the script that makes the shell complete drover's commands and
flags, the values of --launcher, --log-level and --progress, and the node
and process names of the running drover serve (for --node and the verbs
that take a NAME; nothing when no serve answers within 2s). Load it for this shell, or install it for every new one:

  bash:  source <(drover completion bash)
         drover completion bash > ~/.local/share/bash-completion/completions/drover
  zsh:   drover completion zsh > "${fpath[1]}/_drover"   (needs compinit)
  fish:  drover completion fish > ~/.config/fish/completions/drover.fish`,
		Example:   `  source <(drover completion bash)`,
		ValidArgs: []string{"bash", "zsh", "fish"},
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError("completion needs one shell: bash, zsh or fish")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(e.stdout, true)
			case "zsh":
				return root.GenZshCompletion(e.stdout)
			case "fish":
				return root.GenFishCompletion(e.stdout, true)
			}
			return usageError("completion: unknown shell %q: want bash, zsh or fish", args[0])
		},
	}
}

// completionTimeout bounds a look-up in the running serve while the user
// waits at a Tab: a serve that does not answer by then completes nothing.
const completionTimeout = 2 * time.Second

// addNameCompletion makes the shell complete what the user would type
// next: process names for the verbs that take them, node names for
// --node, and the fixed values of --launcher, --log-level and --progress.
// Names come from the serve the verbs talk to (--manager if given); when
// there is none, or it does not answer in time, nothing is offered and
// nothing is printed.
func addNameCompletion(root *cobra.Command) {
	fixed := map[string][]string{
		"launcher":  {"local", "ssh", "slurm"},
		"log-level": {"debug", "info", "warn", "error"},
		"progress":  {"auto", "plain", "none"},
	}
	for name, values := range fixed {
		if root.PersistentFlags().Lookup(name) != nil {
			_ = root.RegisterFlagCompletionFunc(name, completeFixed(values))
		}
	}
	// Which processes each verb's NAME arguments may be: stop, kill and
	// send act on running ones, purge on ended ones, poll and logs on any.
	procs := map[string]struct {
		filter func(client.Status) bool
		max    int // how many NAME arguments; 0: any number
	}{
		"stop":  {isRunning, 1},
		"kill":  {isRunning, 1},
		"send":  {isRunning, 1},
		"purge": {func(s client.Status) bool { return !s.Running }, 1},
		"poll":  {nil, 0},
		"logs":  {nil, 0},
	}
	var walk func(*cobra.Command)
	walk = func(cmd *cobra.Command) {
		for name, values := range fixed {
			if cmd.LocalNonPersistentFlags().Lookup(name) != nil {
				_ = cmd.RegisterFlagCompletionFunc(name, completeFixed(values))
			}
		}
		if cmd.LocalNonPersistentFlags().Lookup("node") != nil {
			_ = cmd.RegisterFlagCompletionFunc("node", completeNodes)
		}
		if p, ok := procs[cmd.Name()]; ok && cmd.Parent() == root {
			cmd.ValidArgsFunction = completeProcs(p.filter, p.max)
		}
		if cmd.Name() == "log-level" && cmd.Parent() == root {
			cmd.ValidArgsFunction = completeFixed(fixed["log-level"])
		}
		for _, c := range cmd.Commands() {
			walk(c)
		}
	}
	walk(root)
}

// completeFixed offers those of values that start with what is typed.
func completeFixed(values []string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		var out []string
		for _, v := range values {
			if strings.HasPrefix(v, toComplete) {
				out = append(out, v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func isRunning(s client.Status) bool { return s.Running }

// completionClient dials the serve the command would talk to, quickly.
func completionClient(cmd *cobra.Command) (context.Context, *client.Client, func(), error) {
	manager, _ := cmd.Flags().GetString("manager")
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	c, err := client.Dial(ctx, client.Options{Manager: manager})
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return ctx, c, func() { c.Close(); cancel() }, nil
}

func completeNodes(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	ctx, c, done, err := completionClient(cmd)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer done()
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, n := range nodes {
		if strings.HasPrefix(n.Name, toComplete) {
			names = append(names, n.Name)
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// completeProcs completes up to max (0: any number) process names that
// pass filter (nil: all), leaving out those already given.
func completeProcs(filter func(client.Status) bool, max int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, c, done, err := completionClient(cmd)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		defer done()
		sts, err := c.Poll(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var names []string
		for _, s := range sts {
			if (filter == nil || filter(s)) && strings.HasPrefix(s.Name, toComplete) && !slices.Contains(args, s.Name) {
				names = append(names, s.Name)
			}
		}
		slices.Sort(names)
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}
