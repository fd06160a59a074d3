// Log Analytics workspace + workspace-based Application Insights (Entra ID ingestion only).

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@minValue(30)
@maxValue(730)
@description('Days the workspace keeps logs.')
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    // Telemetry is accepted only with an Entra ID token (Monitoring Metrics Publisher).
    DisableLocalAuth: true
  }
}

output LOG_ANALYTICS_WORKSPACE_ID string = workspace.id
output APPLICATION_INSIGHTS_NAME string = appInsights.name
