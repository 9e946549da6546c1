package cli

import (
	"github.com/spf13/cobra"
)

func newCompletion(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "Print a shell completion script",
		Long: `Prints the script that makes the shell complete drover's commands and
flags. Load it for this shell, or install it for every new one:

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
