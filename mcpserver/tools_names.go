package mcpserver

// namesTools are the workspace naming, discovery and stop/start tools
// (workspace-full and, for workspace_list, workspace-core).
var namesTools = []tool{}
