# Prints, as JSON, what Get-Help must say about each cmdlet of the built module: parameter types, sets,
# positions, pipeline input, aliases, wildcard support and defaults, read from the compiled cmdlets themselves.
# Build-Help runs it in a child pwsh (the build process never loads the module it is building).
param([Parameter(Mandatory)] [string] $ModuleManifest)

$ErrorActionPreference = 'Stop'
$module = Import-Module $ModuleManifest -PassThru
# WhatIf and Confirm stay: help lists them with the parameters of the cmdlets that support them.
$common = [System.Management.Automation.PSCmdlet]::CommonParameters

# A default as help shows it: the value a fresh cmdlet object holds, or None when it holds nothing.
function Format-Default($Value) {
    if ($null -eq $Value) { return 'None' }
    if ($Value -is [System.Management.Automation.SwitchParameter]) { return [string] $Value.IsPresent }
    if ($Value -is [Array]) { return $(if ($Value.Length) { ($Value | ForEach-Object { Format-Default $_ }) -join ', ' } else { 'None' }) }
    if ($Value -is [IFormattable]) { return $Value.ToString($null, [cultureinfo]::InvariantCulture) }
    if ("$Value" -eq '') { return 'None' }
    return "$Value"
}

function Get-TypeName([type] $Type) {
    $underlying = [Nullable]::GetUnderlyingType($Type)
    if ($underlying) { $Type = $underlying }
    return $Type.Name
}

$commands = foreach ($command in Get-Command -Module $module.Name -CommandType Cmdlet | Sort-Object Name) {
    $instance = [Activator]::CreateInstance($command.ImplementingType)
    $parameters = foreach ($parameter in $command.Parameters.Values) {
        if ($parameter.Name -in $common) { continue }
        $attributes = @($parameter.Attributes | Where-Object { $_ -is [System.Management.Automation.ParameterAttribute] })
        $byValue = [bool] ($attributes | Where-Object ValueFromPipeline)
        $byName = [bool] ($attributes | Where-Object ValueFromPipelineByPropertyName)
        $pipeline = switch ($true) {
            ($byValue -and $byName) { 'True (ByValue, ByPropertyName)'; break }
            $byValue { 'True (ByValue)'; break }
            $byName { 'True (ByPropertyName)'; break }
            default { 'False' }
        }
        $mandatoryEverywhere = -not ($attributes | Where-Object { -not $_.Mandatory })
        $positions = @($attributes | Where-Object { $_.Position -ge 0 } | ForEach-Object Position | Sort-Object -Unique)
        $property = $command.ImplementingType.GetProperty($parameter.Name)
        $validateSet = $parameter.Attributes | Where-Object { $_ -is [System.Management.Automation.ValidateSetAttribute] } | Select-Object -First 1
        [ordered]@{
            Name = $parameter.Name
            Type = Get-TypeName $parameter.ParameterType
            TypeFullName = $(if ([Nullable]::GetUnderlyingType($parameter.ParameterType)) { [Nullable]::GetUnderlyingType($parameter.ParameterType).FullName } else { $parameter.ParameterType.FullName })
            IsArray = $parameter.ParameterType.IsArray
            IsSwitch = $parameter.SwitchParameter
            Required = $mandatoryEverywhere
            Position = $(if ($positions.Count -eq 1) { [string] $positions[0] } else { 'named' })
            PipelineInput = $pipeline
            Aliases = $(if ($parameter.Aliases.Count) { $parameter.Aliases -join ', ' } else { 'none' })
            Globbing = [bool] ($parameter.Attributes | Where-Object { $_ -is [System.Management.Automation.SupportsWildcardsAttribute] })
            Default = $(if ($mandatoryEverywhere -or -not $property) { 'None' } else { Format-Default $property.GetValue($instance) })
            ValidValues = @($(if ($validateSet) { $validateSet.ValidValues } elseif ($parameter.ParameterType.IsEnum) { [Enum]::GetNames($parameter.ParameterType) }))
        }
    }
    $sets = foreach ($set in $command.ParameterSets | Sort-Object { -not $_.IsDefault }) {
        [ordered]@{
            Name = $set.Name
            Parameters = @(foreach ($p in $set.Parameters) {
                if ($p.Name -in $common) { continue }
                [ordered]@{ Name = $p.Name; Required = $p.IsMandatory; Position = $(if ($p.Position -ge 0) { [string] $p.Position } else { 'named' }) }
            })
        }
    }
    [ordered]@{ Name = $command.Name; HelpUri = $command.HelpUri; Parameters = @($parameters); ParameterSets = @($sets) }
}
ConvertTo-Json -InputObject @($commands) -Depth 6
