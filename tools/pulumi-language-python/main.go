// pulumi-language-python is the Python language host this project builds for the Pulumi engine.
//
// Upstream's host (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) is not served by the
// Go module proxy our machines reach, so this small host implements the part of the LanguageRuntime
// protocol that `pulumi up/preview/refresh/destroy/import` and the Automation API use. Programs run
// through the SDK's own `pulumi-language-python-exec` script, which install-pulumi copies next to it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// bailExitCode is what pulumi-language-python-exec exits with after it has already reported the error.
const bailExitCode = 32

func main() {
	flag.String("tracing", "", "ignored: tracing endpoint")
	flag.String("root", "", "ignored: project root (the engine also sends it in each request)")
	flag.Parse()
	engineAddress := ""
	if flag.NArg() > 0 {
		engineAddress = flag.Arg(flag.NArg() - 1)
	}
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	host := &languageHost{execScript: filepath.Join(filepath.Dir(self), "pulumi-language-python-exec"), engineAddress: engineAddress}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, host)
			return nil
		},
		Options: rpcutil.TracingServerInterceptorOptions(nil),
		Cancel:  stopOnInterrupt(),
	})
	if err != nil {
		fail(fmt.Errorf("could not start the language host: %w", err))
	}
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fail(err)
	}
}

// stopOnInterrupt: the engine stops a plugin with SIGINT and kills it 5 s later. Under a caller that ignores
// SIGINT (a background job of a non-interactive shell, and all it starts) the host the CLI asks for the
// runtime's metadata inherited the ignore, and every preview and up waited those 5 s before the program
// started. Notify takes SIGINT back from an inherited ignore.
func stopOnInterrupt() chan bool {
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, os.Interrupt)
	stop := make(chan bool)
	go func() {
		<-interrupted
		close(stop)
	}()
	return stop
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
	os.Exit(1)
}

type languageHost struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	execScript    string
	engineAddress string
}

func (h *languageHost) Handshake(_ context.Context, req *pulumirpc.LanguageHandshakeRequest) (*pulumirpc.LanguageHandshakeResponse, error) {
	h.engineAddress = req.GetEngineAddress()
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *languageHost) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

// GetRequiredPlugins reports none: this project's plugins are declared in Pulumi.yaml, never acquired.
func (h *languageHost) GetRequiredPlugins(context.Context, *pulumirpc.GetRequiredPluginsRequest) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *languageHost) GetRequiredPackages(context.Context, *pulumirpc.GetRequiredPackagesRequest) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *languageHost) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	info := req.GetInfo()
	python, env, err := pythonFor(info)
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	config := req.GetConfig()
	if config == nil {
		config = map[string]string{} // the SDK expects an object, never null, even for a stack with no config
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return nil, err
	}
	secretKeys := req.GetConfigSecretKeys()
	if secretKeys == nil {
		secretKeys = []string{}
	}
	secretKeysJSON, err := json.Marshal(secretKeys)
	if err != nil {
		return nil, err
	}
	env = append(env, "PULUMI_CONFIG="+string(configJSON), "PULUMI_CONFIG_SECRET_KEYS="+string(secretKeysJSON))

	cmd := exec.CommandContext(ctx, python, append([]string{"-u", h.execScript}, h.execArgs(req)...)...)
	cmd.Dir = req.GetPwd()
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return &pulumirpc.RunResponse{}, nil
	case errors.As(err, &exitErr) && exitErr.ExitCode() == bailExitCode:
		return &pulumirpc.RunResponse{Bail: true}, nil
	case errors.As(err, &exitErr):
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode())}, nil
	default:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("could not run %s: %v", python, err)}, nil
	}
}

// execArgs is the command line pulumi-language-python-exec parses (see its argparse block).
func (h *languageHost) execArgs(req *pulumirpc.RunRequest) []string {
	var args []string
	add := func(flagName, value string) {
		if value != "" {
			args = append(args, "--"+flagName, value)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", h.engineAddress)
	add("project", req.GetProject())
	add("stack", req.GetStack())
	add("pwd", req.GetPwd())
	add("dry_run", strconv.FormatBool(req.GetDryRun()))
	add("parallel", strconv.Itoa(int(req.GetParallel())))
	add("organization", req.GetOrganization())
	add("root_directory", req.GetInfo().GetRootDirectory())
	program := req.GetInfo().GetEntryPoint()
	if program == "" {
		program = "."
	}
	return append(append(args, program), req.GetArgs()...)
}

// pythonFor finds the interpreter: the project's `virtualenv` runtime option if set, else
// PULUMI_PYTHON_CMD, else python3 on PATH. It returns the environment to run it with.
func pythonFor(info *pulumirpc.ProgramInfo) (string, []string, error) {
	env := os.Environ()
	venv := stringOption(info.GetOptions(), "virtualenv")
	if venv == "" {
		if cmd := os.Getenv("PULUMI_PYTHON_CMD"); cmd != "" {
			return cmd, env, nil
		}
		python, err := exec.LookPath("python3")
		return python, env, err
	}
	if !filepath.IsAbs(venv) {
		venv = filepath.Join(info.GetRootDirectory(), venv)
	}
	python := filepath.Join(venv, "bin", "python")
	if _, err := os.Stat(python); err != nil {
		return "", nil, fmt.Errorf("the virtualenv %q named in Pulumi.yaml has no bin/python: create it first (make venv)", venv)
	}
	env = withoutVar(env, "PYTHONHOME")
	env = append(withoutVar(env, "PATH"), "VIRTUAL_ENV="+venv,
		"PATH="+filepath.Join(venv, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	return python, env, nil
}

func stringOption(options *structpb.Struct, key string) string {
	if options == nil {
		return ""
	}
	return options.GetFields()[key].GetStringValue()
}

func withoutVar(env []string, name string) []string {
	kept := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			kept = append(kept, kv)
		}
	}
	return kept
}

// RunPlugin runs a plugin written in Python (a directory with __main__.py) and streams its output.
func (h *languageHost) RunPlugin(req *pulumirpc.RunPluginRequest, server grpc.ServerStreamingServer[pulumirpc.RunPluginResponse]) error {
	python, env, err := pythonFor(req.GetInfo())
	if err != nil {
		return err
	}
	program := req.GetInfo().GetProgramDirectory()
	if program == "" {
		program = req.GetProgram()
	}
	cmd := exec.CommandContext(server.Context(), python, append([]string{"-u", program}, req.GetArgs()...)...)
	cmd.Dir = req.GetPwd()
	cmd.Env = append(env, req.GetEnv()...)
	var send sync.Mutex
	stream := func(wrap func([]byte) *pulumirpc.RunPluginResponse) io.Writer {
		return writerFunc(func(p []byte) (int, error) {
			send.Lock()
			defer send.Unlock()
			return len(p), server.Send(wrap(append([]byte(nil), p...)))
		})
	}
	cmd.Stdout = stream(func(b []byte) *pulumirpc.RunPluginResponse {
		return &pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Stdout{Stdout: b}}
	})
	cmd.Stderr = stream(func(b []byte) *pulumirpc.RunPluginResponse {
		return &pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Stderr{Stderr: b}}
	})
	code := int32(0)
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			return err
		}
		code = int32(exitErr.ExitCode())
	}
	return server.Send(&pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Exitcode{Exitcode: code}})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// InstallDependencies installs requirements.txt into the project's virtualenv, creating it if missing.
func (h *languageHost) InstallDependencies(req *pulumirpc.InstallDependenciesRequest, server grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse]) error {
	info := req.GetInfo()
	venv := stringOption(info.GetOptions(), "virtualenv")
	if venv == "" {
		return nil
	}
	if !filepath.IsAbs(venv) {
		venv = filepath.Join(info.GetRootDirectory(), venv)
	}
	steps := [][]string{}
	if _, err := os.Stat(filepath.Join(venv, "bin", "python")); err != nil {
		steps = append(steps, []string{"python3", "-m", "venv", venv})
	}
	requirements := filepath.Join(info.GetProgramDirectory(), "requirements.txt")
	if _, err := os.Stat(requirements); err == nil {
		steps = append(steps, []string{filepath.Join(venv, "bin", "python"), "-m", "pip", "install", "-r", requirements})
	}
	for _, step := range steps {
		out, err := exec.Command(step[0], step[1:]...).CombinedOutput()
		scanner := bufio.NewScanner(strings.NewReader(string(out)))
		for scanner.Scan() {
			if sendErr := server.Send(&pulumirpc.InstallDependenciesResponse{Stdout: []byte(scanner.Text() + "\n")}); sendErr != nil {
				return sendErr
			}
		}
		if err != nil {
			return fmt.Errorf("%s failed: %w", strings.Join(step, " "), err)
		}
	}
	return nil
}

func (h *languageHost) About(_ context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	python, _, err := pythonFor(req.GetInfo())
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(python, "--version").Output()
	if err != nil {
		return nil, err
	}
	return &pulumirpc.AboutResponse{Executable: python, Version: strings.TrimPrefix(strings.TrimSpace(string(out)), "Python ")}, nil
}

func (h *languageHost) GetProgramDependencies(context.Context, *pulumirpc.GetProgramDependenciesRequest) (*pulumirpc.GetProgramDependenciesResponse, error) {
	return &pulumirpc.GetProgramDependenciesResponse{}, nil
}
